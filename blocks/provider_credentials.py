"""The Prefect block that holds one provider's API key (and optional base URL)."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class ProviderCredentials(Block):
    """An API key for OpenAI or Anthropic, kept secret until the call that needs it.

    Used when `LANEWISE_OPENAI_CREDENTIALS_BLOCK` / `LANEWISE_ANTHROPIC_CREDENTIALS_BLOCK`
    names a saved block of this type. Precedence: the named block's key wins over
    `LANEWISE_<PROVIDER>_API_KEY`, which wins over the SDK's own `OPENAI_API_KEY` /
    `ANTHROPIC_API_KEY`; with none of them lanewise calls its local emulator (or, with
    `LANEWISE_USE_EMULATOR=false`, stops with a message saying how to set a key). The
    block's base URL, when set, wins over the provider settings block's and
    `LANEWISE_<PROVIDER>_BASE_URL`.
    """

    _block_type_name = "lanewise provider credentials"
    _block_type_slug = "lanewise-provider-credentials"
    _description = ("API key (kept secret) and optional base URL for one lanewise provider; "
                    "point LANEWISE_OPENAI_CREDENTIALS_BLOCK or "
                    "LANEWISE_ANTHROPIC_CREDENTIALS_BLOCK at it.")

    provider: Literal["openai", "anthropic"] = Field(
        description="The provider this key is for: openai or anthropic.")
    api_key: SecretStr = Field(description="The provider API key (kept secret).")
    base_url: str | None = Field(
        default=None, title="Base URL",
        description="Override of the API base URL (proxies, gateways; OpenAI: "
        "ending in /v1). Wins over the provider settings block's base URL.")
