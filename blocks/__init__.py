"""Prefect block types of lanewise, and their registration with a Prefect API.

Register them with `register_block_types()` (what `lanewise up` does), or with
`prefect block register -m blocks`.
"""

from __future__ import annotations

from blocks.provider_admin_key import ProviderAdminKey
from blocks.provider_credentials import ProviderCredentials
from blocks.provider_settings import AnthropicSettings, OpenAISettings
from blocks.storage import StorageSettings

BLOCK_TYPES = (ProviderCredentials, ProviderAdminKey, OpenAISettings, AnthropicSettings,
               StorageSettings)


def register_block_types(api_url: str | None = None) -> list[str]:
    """Register every lanewise block type with the Prefect API (`api_url`, else the
    current PREFECT_API_URL); idempotent. Returns the registered slugs."""
    from contextlib import nullcontext

    from prefect.settings import PREFECT_API_URL, temporary_settings

    scope = temporary_settings({PREFECT_API_URL: api_url}) if api_url else nullcontext()
    with scope:
        for block_type in BLOCK_TYPES:
            # _sync: registered now even when called from inside an event loop.
            block_type.register_type_and_schema(_sync=True)
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


__all__ = ["BLOCK_TYPES", "AnthropicSettings", "OpenAISettings", "ProviderAdminKey",
           "ProviderCredentials", "StorageSettings", "register_block_types"]
