"""All of lanewise's settings, read from `LANEWISE_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


# Storage roots whose endpoint and keys come from the `storage_*` settings (s3fs).
S3_SCHEMES = ("s3://", "s3a://")


@dataclass(frozen=True)
class RateLimits:
    """A provider's rate limits as configured (None: no limit of that kind on our side)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    output_tokens_per_minute: int | None
    max_concurrency: int


class Settings(BaseSettings):
    """lanewise's settings; every field can be set as `LANEWISE_<FIELD>`.

    Fields can also come from saved Prefect blocks named by `*_settings_block`,
    `storage_block` and `*_credentials_block`: see `with_blocks` (a value set in a named
    block wins over the environment, which wins over the defaults here).
    """

    model_config = SettingsConfigDict(env_prefix="LANEWISE_", extra="ignore")

    home: Path = Field(
        default=Path(".lanewise"),
        description="Folder for the default SQLite ledger and the default storage root.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the ledger; default is a SQLite file under `home`.",
    )
    storage_root: str | None = Field(
        default=None,
        description="fsspec URL for inputs, JSONL sent, raw outputs and results "
        "(a folder or s3://bucket/prefix); default is `home`/storage.",
    )
    prices_path: Path = Field(
        default=DATA_DIR / "prices.json",
        description="The per-model price table (standard, cached and batch rates).",
    )
    catalog_path: Path = Field(
        default=DATA_DIR / "catalog.yaml",
        description="The task catalog: one entry per AI task of the product.",
    )
    emulator_url: str | None = Field(
        default=None,
        description="Base URL of an emulator already running (e.g. http://127.0.0.1:8765); "
        "when unset and no API key is configured, the shared background emulator of `home` "
        "is used (started on first use; see docs/emulator.md).",
    )
    stack_prefect_port: int = Field(
        default=4200, ge=0, le=65535,
        description="Port of the Prefect server (API and UI) `lanewise up` starts; a free "
        "one when it is taken (0: any free port).",
    )
    stack_emulator_port: int = Field(
        default=8765, ge=0, le=65535,
        description="Port of the emulator `lanewise up` starts; a free one when it is "
        "taken (0: any free port).",
    )
    openai_credentials_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-provider-credentials` block for OpenAI.",
    )
    anthropic_credentials_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-provider-credentials` block for Anthropic.",
    )
    openai_enqueued_token_budget: int = Field(
        default=2_000_000,
        description="Estimated input tokens one OpenAI batch may enqueue (your tier's "
        "per-model enqueued-token limit).",
    )
    enqueued_token_budgets: dict[str, int] = Field(
        default_factory=dict,
        description="Per-model overrides of `openai_enqueued_token_budget`, as JSON "
        "(e.g. {\"gpt-4o\": 90000}); a limit the provider states when it refuses a batch "
        "(token_limit_exceeded) is learned and used when lower.",
    )
    shard_token_share: float = Field(
        default=0.25, gt=0, le=1,
        description="Largest share of the enqueued-token budget one shard may hold: "
        "smaller shards keep several batches in flight, so one is collected while the "
        "others run and the next is sent as soon as one ends.",
    )
    quick_batch_seconds: float = Field(
        default=30, ge=0,
        description="When the model's batches lately all ended within this many seconds "
        "of their creation, shards take the whole enqueued-token budget: with batches "
        "that quick, fewer and larger ones cost less than pipelining small ones.",
    )
    shard_max_requests: int | None = Field(
        default=None,
        description="Cap on requests per shard, below the provider's own limit (smaller "
        "shards finish and are collected sooner; unset means the provider's limit).",
    )
    lease_seconds: float = Field(
        default=60.0,
        description="How long a run's lease lasts without renewal: another process may "
        "take over a run key whose driver stopped renewing for this long.",
    )
    lease_wait_seconds: float = Field(
        default=0.0,
        description="How long a run waits for another process driving the same run key "
        "to let go before giving up (0: say who drives it and stop at once).",
    )
    poll_initial_seconds: float = Field(
        default=0.25, gt=0, description="Shortest wait between batch status polls (a "
        "batch is first polled right after it is created, then after this long).")
    poll_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait between batch status polls.")
    poll_lateness: float = Field(
        default=0.2, gt=0, description="Poll again after this share of the youngest "
        "in-flight batch's age (within the two bounds above): a batch is noticed at most "
        "this much later than it ended, relative to how long it took.")
    batch_timeout_hours: float = Field(
        default=25.0, description="Give up awaiting a batch after this long (providers "
        "expire batches at 24 h).")
    drain_claim_size: int = Field(
        default=50_000, gt=0,
        description="Most queued items of one task a drain claims for one batch-lane run "
        "(the deferred-work queue); what is left waits for the next drain.")
    use_emulator: bool = Field(
        default=True,
        description="With no API key configured, call the emulator; set false in production "
        "so a missing key is an error instead.",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="OpenAI key (local fallback; prefer a Prefect block). Also read from "
        "OPENAI_API_KEY.",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        description="Anthropic key (local fallback; prefer a Prefect block). Also read from "
        "ANTHROPIC_API_KEY.",
    )
    openai_admin_key: SecretStr | None = Field(
        default=None,
        description="OpenAI admin key (sk-admin-...) for `lanewise reconcile`, which reads "
        "the organization costs API (prefer a Prefect block). Also read from "
        "OPENAI_ADMIN_KEY.",
    )
    anthropic_admin_key: SecretStr | None = Field(
        default=None,
        description="Anthropic admin key (sk-ant-admin...) for `lanewise reconcile`, which "
        "reads the cost report (prefer a Prefect block). Also read from ANTHROPIC_ADMIN_KEY.",
    )
    openai_admin_key_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-provider-admin-key` block for OpenAI.",
    )
    anthropic_admin_key_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-provider-admin-key` block for Anthropic.",
    )
    openai_cost_project_id: str | None = Field(
        default=None,
        description="Reconcile only this OpenAI project's costs (the project lanewise's "
        "API key belongs to); unset: the whole organization's.",
    )
    anthropic_cost_workspace_id: str | None = Field(
        default=None,
        description="Reconcile only this Anthropic workspace's costs (`default` for the "
        "default workspace); unset: the whole organization's.",
    )
    reconcile_tolerance_usd: Decimal = Field(
        default=Decimal("0.01"), ge=0,
        description="`lanewise reconcile` fails when the ledger and the provider's cost "
        "report differ by more than this many USD on any day, model and lane.",
    )

    openai_settings_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-openai-settings` block; the values set in it "
        "win over the LANEWISE_OPENAI_* environment variables.",
    )
    anthropic_settings_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-anthropic-settings` block; the values set in "
        "it win over the LANEWISE_ANTHROPIC_* environment variables.",
    )
    storage_block: str | None = Field(
        default=None,
        description="Name of a saved `lanewise-storage` block; the values set in it win over "
        "LANEWISE_STORAGE_ROOT and the LANEWISE_STORAGE_* environment variables.",
    )
    openai_base_url: str | None = Field(
        default=None,
        description="OpenAI API base URL, ending in /v1 (proxies, gateways, Azure-style "
        "endpoints); unset: the SDK's default (or its OPENAI_BASE_URL). A credentials "
        "block's own base URL wins. Not used when lanewise runs on the emulator.",
    )
    anthropic_base_url: str | None = Field(
        default=None,
        description="Anthropic API base URL; unset: the SDK's default (or its "
        "ANTHROPIC_BASE_URL). A credentials block's own base URL wins. Not used when "
        "lanewise runs on the emulator.",
    )
    openai_default_model: str = Field(
        default="gpt-4o-mini",
        description="OpenAI model used when a request names none (the catalog's tasks "
        "name their own).",
    )
    anthropic_default_model: str = Field(
        default="claude-haiku-4-5",
        description="Anthropic model used when a request names none (the catalog's tasks "
        "name their own).",
    )
    openai_requests_per_minute: int | None = Field(
        default=None, gt=0,
        description="OpenAI requests per minute lanewise allows itself in the live lane "
        "(your tier's RPM); unset: no limit on our side (the provider's 429s still apply).",
    )
    openai_tokens_per_minute: int | None = Field(
        default=None, gt=0,
        description="OpenAI tokens per minute (input plus output, your tier's TPM) for the "
        "live lane; unset: no limit on our side.",
    )
    openai_max_concurrency: int = Field(
        default=8, gt=0, description="Most OpenAI live calls in flight at once.")
    anthropic_requests_per_minute: int | None = Field(
        default=None, gt=0,
        description="Anthropic requests per minute (RPM) for the live lane; unset: no limit "
        "on our side (the provider's 429s still apply).",
    )
    anthropic_tokens_per_minute: int | None = Field(
        default=None, gt=0,
        description="Anthropic input tokens per minute (ITPM) for the live lane; unset: no "
        "limit on our side.",
    )
    anthropic_output_tokens_per_minute: int | None = Field(
        default=None, gt=0,
        description="Anthropic output tokens per minute (OTPM) for the live lane; unset: no "
        "limit on our side.",
    )
    anthropic_max_concurrency: int = Field(
        default=8, gt=0, description="Most Anthropic live calls in flight at once.")
    live_model_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per-model overrides of the live lane's rate limits, as JSON keyed by "
        "model (e.g. {\"gpt-4o\": {\"requests_per_minute\": 500, \"tokens_per_minute\": "
        "30000, \"max_concurrency\": 4}}); keys as in `RateLimits`. Other models use "
        "their provider's settings above; each model has its own counters either way.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (e.g. redis://127.0.0.1:6379/0): the live lane's rate "
        "limits, concurrency and provider rate-limit state are then shared by every "
        "process and replica through it; unset: each process keeps its own.",
    )
    redis_prefix: str = Field(
        default="lanewise",
        description="Prefix of lanewise's Redis keys, so several deployments can share "
        "one Redis without sharing limits.",
    )
    live_record_fsync: bool = Field(
        default=False,
        description="Flush each live call's ledger record to disk before the call returns "
        "(SQLite synchronous=FULL, PostgreSQL synchronous_commit on), so that it survives "
        "an OS crash or power loss too, at the cost of one disk flush per call. Default: "
        "the record is committed to the database's log before the call returns, which "
        "survives any crash of lanewise's processes; the disk flush follows (see "
        "lanewise/live/record.py).",
    )
    budget_refresh_seconds: float = Field(
        default=5.0, ge=0,
        description="At most how often the live lane reads again from the ledger what a "
        "task with a daily or monthly budget spent (both lanes, all processes), in the "
        "background: no call waits for it. Between reads it adds its own calls' costs at "
        "once; lower sees other processes' spend sooner (0: a read after every call).",
    )
    service_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every request to `lanewise serve` must carry (at least "
        "16 characters; make one with `python -c \"import secrets; "
        "print(secrets.token_urlsafe(32))\"`); prefer a Prefect Secret block "
        "(`service_token_block`). The service refuses to start without one.",
    )
    service_token_block: str | None = Field(
        default=None,
        description="Name of a saved Prefect Secret block holding the service's bearer "
        "token; it wins over LANEWISE_SERVICE_TOKEN.",
    )
    storage_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, R2, moto, ...) for an "
        "s3:// storage root; unset: AWS S3.",
    )
    storage_key_id: str | None = Field(
        default=None,
        description="Access key id for an s3:// storage root; unset: s3fs's own lookup "
        "(AWS_ACCESS_KEY_ID, ~/.aws, instance role).",
    )
    storage_secret: SecretStr | None = Field(
        default=None,
        description="Secret access key for an s3:// storage root (prefer a "
        "`lanewise-storage` block); unset: s3fs's own lookup.",
    )

    # True on settings that `with_blocks` already laid the named blocks over.
    _blocks_applied: bool = PrivateAttr(default=False)

    @property
    def names_blocks(self) -> bool:
        """Whether a setting names a saved Prefect block the lanes read (credentials,
        provider settings, storage): building a lane's context then needs the API."""
        return any(getattr(self, name) for name in BLOCK_SETTINGS)

    def with_blocks(self) -> Settings:
        """These settings with the values of the saved blocks they name laid over them.

        Per field: a value set in a named block wins; a field the block leaves empty
        keeps the environment's (`LANEWISE_*`) value, else the default. Credentials
        blocks are read where keys are needed (`lanewise.providers`). Without any block
        named this reads nothing (and imports no Prefect); applied once per settings.
        """
        if self._blocks_applied:
            return self
        update: dict[str, Any] = {}
        if self.names_blocks:
            from blocks.loading import settings_overrides

            update = settings_overrides(self)
        resolved = self.model_copy(update=update)
        resolved._blocks_applied = True
        return resolved

    def rate_limits(self, provider: str) -> RateLimits:
        """The configured rate limits of `provider` (openai or anthropic)."""
        return RateLimits(
            requests_per_minute=getattr(self, f"{provider}_requests_per_minute"),
            tokens_per_minute=getattr(self, f"{provider}_tokens_per_minute"),
            output_tokens_per_minute=getattr(self, f"{provider}_output_tokens_per_minute",
                                             None),
            max_concurrency=getattr(self, f"{provider}_max_concurrency"),
        )

    def default_model(self, provider: str) -> str:
        """The model used for `provider` when a request names none."""
        return getattr(self, f"{provider}_default_model")

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for the storage root: endpoint and keys of an s3:// root (none
        for other roots). Holds the plain secret: pass it to fsspec, never print it."""
        if not self.resolved_storage_root.startswith(S3_SCHEMES):
            return {}
        options: dict[str, Any] = {}
        if self.storage_endpoint_url:
            options["endpoint_url"] = self.storage_endpoint_url
        if self.storage_key_id:
            options["key"] = self.storage_key_id
        if self.storage_secret is not None:
            options["secret"] = self.storage_secret.get_secret_value()
        return options

    @property
    def resolved_database_url(self) -> str:
        """The ledger URL, defaulting to a SQLite file under `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'ledger.sqlite3').resolve()}"

    @property
    def resolved_storage_root(self) -> str:
        """The storage root URL, defaulting to a folder under `home`."""
        return self.storage_root or str((self.home / "storage").resolve())


# Settings that name a saved Prefect block the lanes read (admin keys are read by
# `lanewise reconcile` alone).
BLOCK_SETTINGS = ("openai_credentials_block", "anthropic_credentials_block",
                  "openai_settings_block", "anthropic_settings_block", "storage_block")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
