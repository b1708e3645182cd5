"""Everything one batch-lane run needs, built once from settings and the catalog."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from lanewise.catalog import TaskSpec, load_catalog
from lanewise.ledger import Ledger
from lanewise.ledger.lease import RunLease
from lanewise.pricing import PriceTable, load_price_table
from lanewise.providers import get_adapter
from lanewise.providers.base import BatchLimits, ProviderAdapter
from lanewise.settings import Settings, get_settings
from lanewise.storage import Storage


def no_crash(point: str) -> None:
    """The production crash hook: does nothing (tests inject crashes here)."""


ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """The default progress callback: reports nowhere."""


@dataclass
class LaneContext:
    """The task, its provider adapter, the ledger, storage and prices of a run."""

    task: TaskSpec
    adapter: ProviderAdapter
    ledger: Ledger
    storage: Storage
    prices: PriceTable
    settings: Settings
    crash_hook: Callable[[str], None] = no_crash
    sleep: Callable[[float], None] = time.sleep
    progress: ProgressCallback = no_progress
    token_budget: int | None = field(default=None)
    collect_chunk: int = 2000
    # Where the run's story goes (batch ids, ends, refusals); a flow run points it at
    # its Prefect run logger.
    log: logging.Logger | logging.LoggerAdapter = field(
        default_factory=lambda: logging.getLogger("lanewise.batch"))
    # The run lease this process holds while it drives a run (set by the runner);
    # steps called on their own take one for their duration.
    lease: RunLease | None = None

    @property
    def shard_token_cap(self) -> int | None:
        """Estimated tokens one shard may hold: a share of the enqueued budget, so that
        several shards are in flight at once (None: no enqueued-token limit)."""
        if self.token_budget is None:
            return None
        share = self.settings.shard_token_share
        slowest = self.ledger.learned_limit(self.task.provider, self.task.model, BATCH_SECONDS,
                                            max_age_seconds=LEARNED_LIMIT_SECONDS)
        if slowest is not None and slowest <= self.settings.quick_batch_seconds:
            share = 1.0  # nothing to collect while others run: fewer, larger batches
        return max(int(self.token_budget * share), 1)

    def learn_token_limit(self, stated: int) -> None:
        """Use a limit the provider stated when it refused a batch, if it is lower."""
        self.ledger.learn_limit(self.task.provider, self.task.model, ENQUEUED_TOKENS, stated)
        if self.token_budget is None or stated < self.token_budget:
            self.token_budget = stated

    @property
    def shard_limits(self) -> BatchLimits:
        """The adapter's batch limits, with the configured cap on requests per shard."""
        cap = self.settings.shard_max_requests
        limits = self.adapter.limits
        if cap is None or cap >= limits.max_requests:
            return limits
        return replace(limits, max_requests=max(cap, 1))

    @classmethod
    def build(cls, task_name: str, settings: Settings | None = None,
              **overrides: Any) -> LaneContext:
        """A context for `task_name` from the settings (ledger, storage, credentials)."""
        # Values of the Prefect blocks the settings name win over the environment's.
        settings = (settings or get_settings()).with_blocks()
        task = load_catalog(settings.catalog_path).get(task_name)
        adapter = overrides.pop("adapter", None) or get_adapter(task.provider, settings)
        ledger = overrides.pop("ledger", None) or Ledger(settings.resolved_database_url)
        budget = None
        if adapter.limits.enqueued_token_budget is not None:
            budget = enqueued_token_budget(settings, ledger, task.provider, task.model)
        return cls(task=task, adapter=adapter, ledger=ledger,
                   storage=overrides.pop("storage", None) or Storage(
                       settings.resolved_storage_root, **settings.storage_options()),
                   prices=load_price_table(settings.prices_path), settings=settings,
                   token_budget=budget, **overrides)


ENQUEUED_TOKENS = "enqueued_tokens"
# The slowest batch of the model's last finished run, creation to end, in seconds.
BATCH_SECONDS = "batch_seconds"
# A learned limit is trusted this long: a tier upgrade raises the real limit, and the
# next refusal (if any) teaches the new figure.
LEARNED_LIMIT_SECONDS = 7 * 24 * 3600


def enqueued_token_budget(settings: Settings, ledger: Ledger, provider: str,
                          model: str) -> int:
    """The model's enqueued-token budget: configured (per model, else the default),
    or the limit the provider stated lately when it is lower."""
    configured = settings.enqueued_token_budgets.get(model,
                                                     settings.openai_enqueued_token_budget)
    learned = ledger.learned_limit(provider, model, ENQUEUED_TOKENS,
                                   max_age_seconds=LEARNED_LIMIT_SECONDS)
    return min(configured, learned) if learned is not None else configured


@dataclass(frozen=True)
class DateWindow:
    """Rows whose date column falls in [start, end] (both inclusive)."""

    start: date
    end: date

    def contains(self, value: Any) -> bool | None:
        """Whether a cell's date is inside; None when the cell is not a date."""
        if isinstance(value, datetime):
            day = value.date()
        elif isinstance(value, date):
            day = value
        elif isinstance(value, str) and value.strip():
            try:
                day = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date()
            except ValueError:
                return None
        else:
            return None
        return self.start <= day <= self.end


def run_key_for(task: str, window: DateWindow | None, run_date: date | None = None) -> str:
    """The run key: task plus run date (nightly) or date range (backfill)."""
    if window is not None and window.start != window.end:
        return f"{task}:{window.start.isoformat()}..{window.end.isoformat()}"
    day = window.start if window is not None else (run_date or date.today())
    return f"{task}:{day.isoformat()}"


def storage_prefix(run_key: str) -> str:
    """A path-safe folder name for a run key."""
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key)


@lru_cache(maxsize=16)
def context_for(task_name: str) -> LaneContext:
    """The lane context of a task, built once per process (without importing Prefect:
    the CLI builds it before the flow exists)."""
    return LaneContext.build(task_name)
