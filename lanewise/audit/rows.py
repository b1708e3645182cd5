"""The audit itself: one row per task (catalog tasks in catalog order, then tasks the
ledger has traffic for that the catalog no longer has), its recommendation and flags.

Every figure is rounded here, once (money to the micro-dollar, volumes to 0.01 a day,
waits to the millisecond), so the table, CSV, JSON and markdown all carry the same
numbers. Definitions, for a window of N UTC days:

* volume per day: (accepted batch items + live calls not deferred) / N;
* cost per day: what both lanes paid in the window / N; per month: per day x 30;
* other lane per month: the same traffic each in the lane it did not run in (batch
  items at their recorded live cost, live calls' usage at batch rates) / N x 30;
  all-batch and all-live: all of it in one lane;
* change per month: all of it in the recommended lane minus the cost now (the
  "move to advised" column; none without a recommendation or a price);
* spent today / this month: what both lanes paid from the UTC day's / month's start,
  as `Ledger.spend_picodollars` counts it for budgets (`measure.spend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from lanewise.audit.flags import DAYS_PER_MONTH, Flag, duplicate_flag, ordered, task_flags
from lanewise.audit.measure import Traffic, Window, measure, spend, window_for
from lanewise.audit.recommend import recommend
from lanewise.audit.units import usd_round
from lanewise.catalog import Catalog, TaskSpec
from lanewise.ledger import Ledger
from lanewise.pricing import PriceTable, from_picodollars


@dataclass(frozen=True)
class TaskRow:
    """One task's line of the audit (money in USD, rounded; waits in seconds)."""

    task: str
    description: str
    owner: str
    in_catalog: bool
    person_waits: bool | None
    max_delay_hours: float | None
    catalog_lane: str | None
    lane_now: str
    batch_share: float | None
    batch_requests: int
    live_requests: int
    per_day: float
    expected_per_day: float | None
    live_wait_p50_s: float | None
    live_wait_p95_s: float | None
    batch_wait_p50_s: float | None
    batch_wait_p95_s: float | None
    paid_in_window_usd: Decimal
    cost_per_day_usd: Decimal
    cost_per_month_usd: Decimal
    other_lane_per_month_usd: Decimal | None
    all_batch_per_month_usd: Decimal | None
    all_live_per_month_usd: Decimal | None
    budget_daily_usd: Decimal | None
    budget_monthly_usd: Decimal | None
    spent_today_usd: Decimal
    spent_this_month_usd: Decimal
    recommended_lane: str | None
    reason: str
    flags: tuple[str, ...] = ()

    @property
    def recommended_per_month_usd(self) -> Decimal | None:
        """The traffic's monthly cost in the recommended lane (None: cannot tell)."""
        return {"batch": self.all_batch_per_month_usd, "live": self.all_live_per_month_usd
                }.get(self.recommended_lane or "")

    @property
    def change_per_month_usd(self) -> Decimal | None:
        """What moving to the recommended lane changes per month: its cost there minus
        now (negative saves; None without a recommendation or when it cannot be priced)."""
        then = self.recommended_per_month_usd
        return None if then is None else then - self.cost_per_month_usd

    @classmethod
    def record_fields(cls) -> tuple[str, ...]:
        """The record's names in order: the row's fields, with the move's change after
        the lanes' monthly costs."""
        names = list(cls.__dataclass_fields__)
        at = names.index("all_live_per_month_usd") + 1
        return (*names[:at], "change_per_month_usd", *names[at:])

    def record(self) -> dict[str, Any]:
        """The row's figures in order, money as Decimals (CSV and JSON write them)."""
        return {name: getattr(self, name) for name in self.record_fields()}


@dataclass
class Audit:
    """The audit of one window: its rows and flags."""

    window: Window
    today: date
    rows: list[TaskRow]
    flags: list[Flag] = field(default_factory=list)

    def totals(self) -> dict[str, Decimal]:
        """Monthly spend now, in the recommended lanes, and the change (the rows'
        rounded figures added up; a row without a recommendation counts as it is)."""
        now = sum((r.cost_per_month_usd for r in self.rows), Decimal(0))
        change = sum((r.change_per_month_usd or Decimal(0) for r in self.rows), Decimal(0))
        return {"cost_per_month_usd": now, "recommended_per_month_usd": now + change,
                "change_per_month_usd": change}


def build_audit(ledger: Ledger, catalog: Catalog, prices: PriceTable, window: Window,
                today: date) -> Audit:
    """Measure the window and make the audit's rows and flags."""
    measured = measure(ledger, prices, window)
    days = window.days
    names = [*catalog.tasks, *sorted(name for name, t in measured.traffic.items()
                                     if name not in catalog.tasks and t.requests)]
    flags: list[Flag] = []
    for name in names:
        flags += task_flags(catalog.tasks.get(name), name, measured.traffic.get(name), days)
    flags += [duplicate_flag(d, days) for d in measured.duplicates]
    flags = ordered(flags)
    spent = spend(ledger, today)
    rows = []
    for name in names:
        kinds = tuple(dict.fromkeys(f.kind for f in flags if name in f.tasks))
        rows.append(task_row(catalog.tasks.get(name), name,
                             measured.traffic.get(name) or Traffic(name), days,
                             spent=spent.get(name, (0, 0)), flags=kinds))
    return Audit(window, today, rows, flags)


def task_row(spec: TaskSpec | None, name: str, t: Traffic, days: int, *,
             spent: tuple[int, int], flags: tuple[str, ...] = ()) -> TaskRow:
    """One task's row from its spec (None: not in the catalog) and measured traffic."""

    def month(picodollars: int | None) -> Decimal | None:
        if picodollars is None:
            return None
        return usd_round(from_picodollars(picodollars) / days * DAYS_PER_MONTH)

    all_batch = None if t.live_as_batch is None else t.batch_paid + t.live_as_batch
    other = None if t.live_as_batch is None else t.batch_as_live + t.live_as_batch
    all_live = t.batch_as_live + t.live_paid
    runs_in = None if not t.requests else (
        "batch" if t.batch_requests >= t.live_requests else "live")
    per_day = t.requests / days
    if spec is None:
        advice, lane = "not in the catalog: add it back, or stop its traffic", None
    else:
        saves = None if all_batch is None else from_picodollars(all_live - all_batch) \
            / days * DAYS_PER_MONTH
        found = recommend(spec, runs_in=runs_in, per_day=per_day, batch_saves_per_month=saves)
        advice, lane = found.reason, found.lane
    share = t.batch_requests / t.requests if t.requests else None
    budget = spec.budget if spec is not None else None
    return TaskRow(
        task=name, description=spec.description.strip() if spec else "",
        owner=spec.owner if spec else "", in_catalog=spec is not None,
        person_waits=spec.person_waits if spec else None,
        max_delay_hours=spec.max_delay_hours if spec else None,
        catalog_lane=spec.lane.value if spec else None, lane_now=lane_words(t),
        batch_share=None if share is None else round(share, 4),
        batch_requests=t.batch_requests, live_requests=t.live_requests,
        per_day=round(per_day, 2),
        expected_per_day=round(spec.expected_per_day(), 2) if spec else None,
        live_wait_p50_s=_seconds(t.live_wait, 0), live_wait_p95_s=_seconds(t.live_wait, 1),
        batch_wait_p50_s=_seconds(t.batch_wait, 0),
        batch_wait_p95_s=_seconds(t.batch_wait, 1),
        paid_in_window_usd=usd_round(from_picodollars(t.paid)),
        cost_per_day_usd=usd_round(from_picodollars(t.paid) / days),
        cost_per_month_usd=month(t.paid), other_lane_per_month_usd=month(other),
        all_batch_per_month_usd=month(all_batch), all_live_per_month_usd=month(all_live),
        budget_daily_usd=budget.daily_usd if budget else None,
        budget_monthly_usd=budget.monthly_usd if budget else None,
        spent_today_usd=usd_round(from_picodollars(spent[0])),
        spent_this_month_usd=usd_round(from_picodollars(spent[1])),
        recommended_lane=lane, reason=advice, flags=flags)


def _seconds(pair: tuple[float, float] | None, index: int) -> float | None:
    return None if pair is None else round(pair[index], 3)


def lane_words(t: Traffic) -> str:
    """Where the traffic ran: "batch", "live", "batch 97% / live 3%" or "no traffic"."""
    if not t.requests:
        return "no traffic"
    if not t.live_requests:
        return "batch"
    if not t.batch_requests:
        return "live"
    share = t.batch_requests / t.requests
    return f"batch {_percent(share)} / live {_percent(1 - share)}"


def _percent(share: float) -> str:
    whole = round(share * 100)
    return "<1%" if whole == 0 else ">99%" if whole == 100 else f"{whole}%"


def today_utc() -> date:
    """Today's UTC day."""
    return datetime.now(UTC).date()


def run_audit(settings: Any = None, *, since: date | None = None, days: int | None = None,
              today: date | None = None, ledger: Ledger | None = None) -> Audit:
    """The audit over the configured ledger, catalog and price table (`settings`:
    lanewise's settings, default the process's); the window as `window_for` makes it."""
    from lanewise.catalog import load_catalog
    from lanewise.ledger import existing_ledger
    from lanewise.pricing import load_price_table
    from lanewise.settings import get_settings

    settings = settings or get_settings()
    today = today or today_utc()
    return build_audit(ledger or existing_ledger(settings),
                       load_catalog(settings.catalog_path),
                       load_price_table(settings.prices_path),
                       window_for(today, since, days), today)
