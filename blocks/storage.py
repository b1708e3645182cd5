"""The Prefect block that says where lanewise keeps its files, and how to reach them."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from blocks.provider_settings import overrides


class StorageSettings(Block):
    """The storage root (inputs, JSONL sent, raw outputs, result Parquet files), kept in
    Prefect so every worker of a team writes to the same place.

    Used when `LANEWISE_STORAGE_BLOCK` names a saved block of this type. Precedence,
    field by field: a value set in this block wins; a field left empty falls back to
    its environment variable (`LANEWISE_STORAGE_ROOT`, `LANEWISE_STORAGE_ENDPOINT_URL`,
    `LANEWISE_STORAGE_KEY_ID`, `LANEWISE_STORAGE_SECRET`), then to the default (a folder
    under `LANEWISE_HOME`; for S3, s3fs's own credential lookup). The endpoint and keys
    are used for s3:// roots only.
    """

    _block_type_name = "lanewise storage"
    _block_type_slug = "lanewise-storage"
    _description = ("Where lanewise keeps inputs, JSONL sent, raw outputs and result "
                    "Parquet files: a shared folder or s3://bucket/prefix, with the "
                    "endpoint and keys of an S3-compatible store.")

    root_url: str = Field(
        title="Root URL",
        description="The storage root: an absolute folder every worker can reach (a shared "
        "mount) or s3://bucket/prefix.")
    endpoint_url: str | None = Field(
        default=None, title="Endpoint URL",
        description="Endpoint of an S3-compatible store (MinIO, Cloudflare "
        "R2, ...), e.g. https://minio.internal:9000. Empty: AWS S3.")
    key_id: str | None = Field(
        default=None, title="Key ID",
        description="S3 access key id. Empty: s3fs's own lookup "
        "(AWS_ACCESS_KEY_ID, ~/.aws, the instance role).")
    secret: SecretStr | None = Field(
        default=None, description="S3 secret access key (kept secret). Empty: s3fs's own "
        "lookup.")

    SETTINGS: ClassVar[dict[str, str]] = {
        "root_url": "storage_root",
        "endpoint_url": "storage_endpoint_url",
        "key_id": "storage_key_id",
        "secret": "storage_secret",
    }

    @field_validator("root_url")
    @classmethod
    def _shared_root(cls, value: str) -> str:
        # A relative folder would be resolved on each worker's own working directory.
        if "://" not in value and not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute folder or a URL such as s3://bucket/prefix")
        return value

    def settings_overrides(self) -> dict[str, Any]:
        """The lanewise settings this block sets (its non-empty fields)."""
        return overrides(self, self.SETTINGS)
