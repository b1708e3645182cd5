"""Prefect block types of lanewise."""

from blocks.provider_admin_key import ProviderAdminKey
from blocks.provider_credentials import ProviderCredentials

__all__ = ["ProviderAdminKey", "ProviderCredentials"]
