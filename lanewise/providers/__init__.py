"""Provider adapters and how lanewise picks credentials for them.

Credentials, in order: a saved Prefect block named by
`LANEWISE_<PROVIDER>_CREDENTIALS_BLOCK`; the environment (`LANEWISE_<PROVIDER>_API_KEY`
or the SDK's own `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`); otherwise the emulator
(`LANEWISE_EMULATOR_URL`, or the shared background emulator of `LANEWISE_HOME`).
The base URL of a real provider, in order: the credentials block's; the provider
settings block's (`LANEWISE_<PROVIDER>_SETTINGS_BLOCK`); `LANEWISE_<PROVIDER>_BASE_URL`;
the SDK's default.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from lanewise.errors import ConfigurationError, MissingCredentialsError
from lanewise.settings import Settings, get_settings

if TYPE_CHECKING:
    from lanewise.providers.base import ProviderAdapter

# The SDKs are imported when an adapter is built, not when lanewise is imported: a
# command that calls no provider (`lanewise runs`, `--help`) starts without them.
ADAPTERS = ("openai", "anthropic")
SDK_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

_embedded_lock = threading.Lock()


@dataclass(frozen=True)
class Credentials:
    """Where and how to call a provider; the key stays a SecretStr until the call."""

    api_key: SecretStr
    base_url: str | None
    source: str  # block | environment | emulator


def embedded_emulator_url(settings: Settings) -> str:
    """URL of the shared background emulator serving `<home>/emulator`.

    One emulator process per state folder, shared by every lanewise process using it
    and outliving them (so a killed run resumes against the batches it created); it is
    started on first use and exits after `LANEWISE_EMULATOR_IDLE_SECONDS` without a
    request. See `lanewise.emulator.background`.
    """
    from lanewise.emulator.background import shared_emulator_url

    with _embedded_lock:  # threads of one process start it once (processes: a file lock)
        return shared_emulator_url(settings.home / "emulator", prices_path=settings.prices_path)


def resolve_credentials(provider: str, settings: Settings | None = None) -> Credentials:
    """The credentials lanewise will use for `provider` (see the module docstring)."""
    settings = (settings or get_settings()).with_blocks()
    base_url = getattr(settings, f"{provider}_base_url")
    setting = f"{provider}_credentials_block"
    block_name = getattr(settings, setting)
    if block_name:
        from blocks.loading import load_block
        from blocks.provider_credentials import ProviderCredentials

        block = load_block(ProviderCredentials, block_name, setting)
        if block.provider != provider:
            raise ConfigurationError(
                f"the credentials block {block_name!r} (named by LANEWISE_{setting.upper()}) "
                f"holds a key for {block.provider}, not {provider}")
        return Credentials(block.api_key, block.base_url or base_url, "block")
    key = getattr(settings, f"{provider}_api_key") or (
        SecretStr(os.environ[SDK_ENV[provider]]) if os.environ.get(SDK_ENV[provider]) else None)
    if key is not None:
        return Credentials(key, base_url, "environment")
    if not settings.use_emulator:
        raise MissingCredentialsError(provider, SDK_ENV[provider],
                                      "lanewise-provider-credentials")
    url = settings.emulator_url or embedded_emulator_url(settings)
    from lanewise.emulator import EMULATOR_API_KEY

    base = f"{url.rstrip('/')}/v1" if provider == "openai" else url.rstrip("/")
    return Credentials(SecretStr(EMULATOR_API_KEY), base, "emulator")


def get_adapter(provider: str, settings: Settings | None = None) -> ProviderAdapter:
    """The adapter for `provider`, with an SDK client built from resolved credentials."""
    if provider not in ADAPTERS:
        raise ConfigurationError(f"unknown provider {provider!r} (known: openai, anthropic)")
    creds = resolve_credentials(provider, settings)
    secret = creds.api_key.get_secret_value()
    if provider == "openai":
        from lanewise.providers.openai_adapter import OpenAIAdapter
        from lanewise.providers.sdk_errors import QuotaAwareOpenAI

        return OpenAIAdapter(QuotaAwareOpenAI(api_key=secret, base_url=creds.base_url,
                                              max_retries=3))
    import anthropic

    from lanewise.providers.anthropic_adapter import AnthropicAdapter

    return AnthropicAdapter(anthropic.Anthropic(api_key=secret, base_url=creds.base_url,
                                                max_retries=3))


def live_client(provider: str, creds: Credentials, *, asynchronous: bool = False) -> Any:
    """A new SDK client for the live lane: sync, or async (one per event loop, since an
    async client's connections belong to the loop that opened them). The SDK's own
    retries are off: the live lane retries itself, within the task's latency budget."""
    secret = creds.api_key.get_secret_value()
    if provider == "openai":
        import openai

        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    elif provider == "anthropic":
        import anthropic

        cls = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
    else:
        raise ConfigurationError(f"unknown provider {provider!r} (known: openai, anthropic)")
    return cls(api_key=secret, base_url=creds.base_url, max_retries=0)


def live_adapter(provider: str, client: Any, async_client: Any = None) -> ProviderAdapter:
    """The adapter of `provider` over the live lane's clients."""
    if provider == "openai":
        from lanewise.providers.openai_adapter import OpenAIAdapter

        return OpenAIAdapter(client, async_client)
    from lanewise.providers.anthropic_adapter import AnthropicAdapter

    return AnthropicAdapter(client, async_client)
