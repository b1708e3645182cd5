"""Translating the official SDKs' exceptions into lanewise's error hierarchy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anthropic
import openai

from lanewise.errors import PermanentProviderError, TransientProviderError

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def is_retryable_status(status: int | None) -> bool:
    """Whether a failed request with this HTTP status is worth retrying."""
    return status is None or status in RETRYABLE_STATUS or status >= 500


@contextlib.contextmanager
def translated(provider: str, action: str) -> Iterator[None]:
    """Re-raise SDK exceptions from the block as Transient/PermanentProviderError."""
    try:
        yield
    except (openai.APIConnectionError, anthropic.APIConnectionError) as exc:
        raise TransientProviderError(f"{provider} {action}: connection failed: {exc}") from exc
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        status = exc.status_code
        message = f"{provider} {action}: HTTP {status}: {exc.message}"
        if is_retryable_status(status):
            raise TransientProviderError(message, status_code=status) from exc
        raise PermanentProviderError(message, status_code=status) from exc
