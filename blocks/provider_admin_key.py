"""The Prefect block that holds one provider's admin key, for reading its cost report."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class ProviderAdminKey(Block):
    """An OpenAI (`sk-admin-...`) or Anthropic (`sk-ant-admin...`) admin key.

    Admin keys read the organization's cost report (`lanewise reconcile`); they can do
    far more than an API key, so they live in their own block, apart from the API keys
    the lanes use, and stay secret until the request that needs them.
    """

    _block_type_name = "lanewise provider admin key"
    _block_type_slug = "lanewise-provider-admin-key"
    _description = "Admin key (cost reports) and optional base URL for one lanewise provider."

    provider: Literal["openai", "anthropic"] = Field(
        description="The provider this key is for: openai or anthropic.")
    admin_key: SecretStr = Field(description="The provider admin key.")
    base_url: str | None = Field(
        default=None, description="Override of the API base URL (OpenAI: ending in /v1).")
