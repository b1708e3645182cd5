"""The Prefect block that holds one provider's API key (and optional base URL)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class ProviderCredentials(Block):
    """An API key for OpenAI or Anthropic, kept secret until the call that needs it."""

    _block_type_name = "lanewise provider credentials"
    _block_type_slug = "lanewise-provider-credentials"
    _description = "API key and optional base URL for one lanewise provider."

    provider: str = Field(description="openai or anthropic.")
    api_key: SecretStr = Field(description="The provider API key.")
    base_url: str | None = Field(default=None,
                                 description="Override of the API base URL (proxies, gateways).")
