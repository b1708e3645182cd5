"""Prefect block types of lanewise."""

from blocks.provider_credentials import ProviderCredentials

__all__ = ["ProviderCredentials"]
