"""All of lanewise's settings, read from `LANEWISE_*` environment variables."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


class Settings(BaseSettings):
    """lanewise's settings; every field can be set as `LANEWISE_<FIELD>`."""

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
