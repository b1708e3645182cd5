"""Everything one batch-lane run needs, built once from settings and the catalog."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
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
    # The run lease this process holds while it drives a run (set by the runner);
    # steps called on their own take one for their duration.
    lease: RunLease | None = None

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
        settings = settings or get_settings()
        task = load_catalog(settings.catalog_path).get(task_name)
        adapter = overrides.pop("adapter", None) or get_adapter(task.provider, settings)
        budget = settings.openai_enqueued_token_budget if \
            adapter.limits.enqueued_token_budget is not None else None
        return cls(task=task, adapter=adapter,
                   ledger=overrides.pop("ledger", None) or Ledger(
                       settings.resolved_database_url),
                   storage=overrides.pop("storage", None) or Storage(
                       settings.resolved_storage_root),
                   prices=load_price_table(settings.prices_path), settings=settings,
                   token_budget=budget, **overrides)


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
