"""Translating the official SDKs' exceptions into lanewise's error hierarchy."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import openai

from lanewise.errors import (
    PermanentProviderError,
    QuotaExhaustedError,
    TransientProviderError,
)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# OpenAI answers an account out of credit with HTTP 429 whose error type and code are
# `insufficient_quota`; Anthropic with HTTP 400 `invalid_request_error` "Your credit
# balance is too low to access the Anthropic API..." (newer APIs: 402 `billing_error`).
OPENAI_QUOTA_CODE = "insufficient_quota"
ANTHROPIC_CREDIT_PHRASE = "credit balance is too low"


def is_retryable_status(status: int | None) -> bool:
    """Whether a failed request with this HTTP status is worth retrying."""
    return status is None or status in RETRYABLE_STATUS or status >= 500


def is_quota_error(provider: str, status: int | None, error: dict[str, Any] | None) -> bool:
    """Whether an error body (`{"type", "code", "message"}`) says the account is out of
    credit. Used for whole calls and for single requests inside a batch alike."""
    error = error or {}
    kind, code = error.get("type"), error.get("code")
    message = str(error.get("message") or "").lower()
    if provider == "openai":
        return OPENAI_QUOTA_CODE in (kind, code)
    return status == 402 or kind == "billing_error" or ANTHROPIC_CREDIT_PHRASE in message


def _error_object(exc: Any) -> dict[str, Any]:
    """The `error` object of an SDK status error's body (both providers' formats)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    error = dict(inner)
    error.setdefault("type", getattr(exc, "type", None))
    error.setdefault("code", getattr(exc, "code", None))
    error.setdefault("message", exc.message)
    return error


@contextlib.contextmanager
def translated(provider: str, action: str) -> Iterator[None]:
    """Re-raise SDK exceptions from the block as lanewise provider errors: an account
    out of credit as QuotaExhaustedError, the rest as Transient/PermanentProviderError."""
    # Only the provider's own SDK raises in its block; it is imported already (by its
    # adapter), and the other SDK is never imported for it (anthropic alone costs ~2 s).
    sdk = importlib.import_module(provider)
    try:
        yield
    except sdk.APIConnectionError as exc:
        raise TransientProviderError(f"{provider} {action}: connection failed: {exc}") from exc
    except sdk.APIStatusError as exc:
        status = exc.status_code
        if is_quota_error(provider, status, _error_object(exc)):
            raise QuotaExhaustedError(provider, detail=f"{action}: HTTP {status}: "
                                      f"{exc.message}", status_code=status) from exc
        message = f"{provider} {action}: HTTP {status}: {exc.message}"
        if is_retryable_status(status):
            raise TransientProviderError(message, status_code=status) from exc
        raise PermanentProviderError(message, status_code=status) from exc


def error_headers(exc: BaseException) -> Mapping[str, str]:
    """The HTTP headers of the response behind a provider error raised by `translated`
    (retry-after, rate-limit state); empty when there was no response (a connection
    failure, a timeout)."""
    response = getattr(exc.__cause__, "response", None)
    headers = getattr(response, "headers", None)
    return headers if headers is not None else {}


def _response_error(response: Any) -> dict[str, Any] | None:
    """The `error` object of an HTTP error response, if its body is JSON."""
    try:
        response.read()
        body = json.loads(response.content or b"null")
    except (ValueError, RuntimeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return None


class QuotaAwareOpenAI(openai.OpenAI):
    """The OpenAI client, except that a 429 `insufficient_quota` is not retried.

    The SDK retries every 429 (a rate limit usually passes); an account out of credit
    does not, so retrying it would only delay the stop by the SDK's backoff.
    """

    def _should_retry(self, response: Any) -> bool:
        if response.status_code == 429 and is_quota_error(
                "openai", 429, _response_error(response)):
            return False
        return super()._should_retry(response)
