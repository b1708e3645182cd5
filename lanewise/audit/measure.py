"""What the ledger measured over the audit's window, per task: requests, waits, paid cost,
the same traffic priced in the other lane, spend per UTC day, and duplicate paid work.

A fixed number of grouped queries whatever the traffic (about a month, ~100k rows):
batch and live volume and cost per task and UTC day, live usage per task and model,
the two wait distributions (`waits.py`, which `lanewise whatif` reads too), and the
duplicates. `task_traffic` is the volume and cost of one task alone, by the same
queries, for `lanewise whatif`.

Dating, as `Ledger.billed_costs` and budgets date spend: a batch item by its batch's
end (`shards.ended_at`, else `submitted_at`, else its run's end, else its start); a
live call by when it was made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from lanewise.audit.waits import DEFERRED, batch_waits, live_waits, percentiles
from lanewise.errors import ConfigurationError
from lanewise.ledger import Ledger
from lanewise.ledger.history import BILLED_STATES
from lanewise.ledger.schema import items, live_calls, runs, shards
from lanewise.pricing import Lane, PriceTable, to_picodollars
from lanewise.usage import Usage

SECONDS_PER_DAY = 86_400
_USAGE_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                  "output_tokens", "cache_write_1h_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class Window:
    """The audit's UTC days, `first` to `last` inclusive."""

    first: date
    last: date

    @property
    def days(self) -> int:
        """How many UTC days the window holds."""
        return (self.last - self.first).days + 1

    @property
    def start(self) -> float:
        """The window's first instant, epoch seconds."""
        return epoch(self.first)

    @property
    def end(self) -> float:
        """The instant after the window's last day, epoch seconds (exclusive)."""
        return epoch(self.last + timedelta(days=1))

    def describe(self, today: date) -> str:
        """The window in words, as the output headers state it."""
        ending = ", today included" if self.last == today else ""
        days = "1 UTC day" if self.days == 1 else f"{self.days} UTC days"
        return f"{self.first} to {self.last} ({days}{ending})"


def epoch(day: date) -> float:
    """The first instant of a UTC day, epoch seconds."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def window_for(today: date, since: date | None = None, days: int | None = None) -> Window:
    """The audit window: the `days` (default 30) complete UTC days ending yesterday (a
    day still under way would read as a slow one); with `since`, from that day to
    today inclusive, or for `days` days from it when both are given."""
    if days is not None and days < 1:
        raise ConfigurationError(f"--days must be 1 or more, not {days}")
    if since is None:
        yesterday = today - timedelta(days=1)
        return Window(yesterday - timedelta(days=(days or 30) - 1), yesterday)
    if since > today:
        raise ConfigurationError(f"--since {since} is after today ({today})")
    return Window(since, since + timedelta(days=days - 1) if days else today)


@dataclass
class Traffic:
    """One task's measured traffic in the window (money in picodollars, waits in s)."""

    task: str
    batch_requests: int = 0
    live_requests: int = 0
    batch_paid: int = 0
    live_paid: int = 0
    #: What the batch items would have cost live (`items.live_cost_picodollars`).
    batch_as_live: int = 0
    #: What the live calls would have cost at batch rates; None when the price table
    #: cannot price some of their usage at batch rates.
    live_as_batch: int | None = 0
    live_wait: tuple[float, float] | None = None
    batch_wait: tuple[float, float] | None = None
    #: Paid per UTC day, both lanes.
    daily_spend: dict[date, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Requests in both lanes."""
        return self.batch_requests + self.live_requests

    @property
    def paid(self) -> int:
        """What both lanes paid."""
        return self.batch_paid + self.live_paid


@dataclass(frozen=True)
class Duplicate:
    """Requests (one content hash each) paid by more than one task or lane."""

    answerers: tuple[tuple[str, str], ...]  # (task, lane), sorted
    requests: int
    answers: int
    #: Everything these requests paid minus, for each, its cheapest answer.
    extra_picodollars: int

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks involved, sorted."""
        return tuple(sorted({task for task, _ in self.answerers}))


@dataclass
class Measurements:
    """Everything measured in the window."""

    window: Window
    traffic: dict[str, Traffic]
    duplicates: list[Duplicate]


def measure(ledger: Ledger, prices: PriceTable, window: Window) -> Measurements:
    """The window's traffic per task and its duplicate paid work (grouped queries)."""
    found: dict[str, Traffic] = {}

    def of(task: str) -> Traffic:
        return found.setdefault(task, Traffic(task))

    postgres = ledger.dialect == "postgresql"
    with ledger.engine.connect() as conn:
        _add_volume(conn, window, postgres, of)
        for task, model, max_prompt, *sums in conn.execute(_live_usage(window)):
            t = of(task)
            total = Usage(**{name: int(s or 0) for name, s in zip(_USAGE_COLUMNS, sums,
                                                                  strict=True)})
            cost = _at_batch_rates(prices, model, total, int(max_prompt or 0))
            t.live_as_batch = None if cost is None or t.live_as_batch is None \
                else t.live_as_batch + cost
        for task, waited in percentiles(conn, postgres, live_waits(window.start, window.end)):
            of(task).live_wait = (waited.p50, waited.p95)
        for task, waited in percentiles(conn, postgres, batch_waits(window.start, window.end)):
            of(task).batch_wait = (waited.p50, waited.p95)
        duplicates = _duplicates(conn, window)
    return Measurements(window, found, duplicates)


def task_traffic(ledger: Ledger, window: Window, task: str) -> Traffic:
    """One task's requests in the window and what they paid, by the queries `measure`
    counts them with (its waits and its other lane's cost are not read)."""
    found = Traffic(task)
    with ledger.engine.connect() as conn:
        _add_volume(conn, window, ledger.dialect == "postgresql", lambda _: found, task)
    return found


def _add_volume(conn: sa.Connection, window: Window, postgres: bool,
                of: Callable[[str], Traffic], task: str | None = None) -> None:
    """Add the window's requests, paid cost and spend per day to each task's Traffic
    (`of` gives it); `task`: that task's alone."""
    batch, live = _batch_days(window, postgres), _live_days(window, postgres)
    if task is not None:
        batch, live = batch.where(runs.c.task == task), live.where(live_calls.c.task == task)
    for name, day, n, paid, as_live in conn.execute(batch):
        t = of(name)
        t.batch_requests += int(n)
        t.batch_paid += int(paid or 0)
        t.batch_as_live += int(as_live or 0)
        _add_spend(t, int(day), int(paid or 0))
    for name, day, n, paid in conn.execute(live):
        t = of(name)
        t.live_requests += int(n)
        t.live_paid += int(paid or 0)
        _add_spend(t, int(day), int(paid or 0))


def spend(ledger: Ledger, today: date) -> dict[str, tuple[int, int]]:
    """What each task paid on the UTC day `today` and in its month (picodollars), in
    both lanes, as `Ledger.spend_picodollars` counts it for budgets, in two grouped
    queries for every task at once (one per lane)."""
    first = today.replace(day=1)
    month_start = epoch(first)
    month_end = epoch((first + timedelta(days=32)).replace(day=1))
    day_start, day_end = epoch(today), epoch(today + timedelta(days=1))

    def day_part(when: sa.ColumnElement, cost: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.sum(sa.case((sa.and_(when >= day_start, when < day_end), cost),
                                   else_=0))

    stamp = _item_stamp()
    batch = (sa.select(runs.c.task, day_part(stamp, items.c.cost_picodollars),
                       sa.func.sum(items.c.cost_picodollars))
             .select_from(_item_source())
             .where(items.c.status.in_(BILLED_STATES), stamp >= month_start,
                    stamp < month_end)
             .group_by(runs.c.task))
    made = live_calls.c.created_at
    live = (sa.select(live_calls.c.task, day_part(made, live_calls.c.cost_picodollars),
                      sa.func.sum(live_calls.c.cost_picodollars))
            .where(made >= month_start, made < month_end).group_by(live_calls.c.task))
    found: dict[str, tuple[int, int]] = {}
    with ledger.engine.connect() as conn:
        for query in (batch, live):
            for task, day, month in conn.execute(query):
                before = found.get(task, (0, 0))
                found[task] = (before[0] + int(day or 0), before[1] + int(month or 0))
    return found


def _add_spend(traffic: Traffic, day_number: int, paid: int) -> None:
    if paid:
        day = date(1970, 1, 1) + timedelta(days=day_number)
        traffic.daily_spend[day] = traffic.daily_spend.get(day, 0) + paid


def _day(stamp: sa.ColumnElement, postgres: bool) -> sa.ColumnElement:
    """The UTC day number (days since 1970-01-01) of an epoch: PostgreSQL's integer
    cast rounds, so it floors first; SQLite's truncates, the floor of a positive time."""
    if postgres:
        return sa.cast(sa.func.floor(stamp / SECONDS_PER_DAY), sa.Integer)
    return sa.cast(stamp / SECONDS_PER_DAY, sa.Integer)


def _item_stamp() -> sa.ColumnElement:
    return sa.func.coalesce(shards.c.ended_at, shards.c.submitted_at, runs.c.finished_at,
                            runs.c.created_at)


def _item_source() -> sa.FromClause:
    return items.join(runs, runs.c.id == items.c.run_id).outerjoin(
        shards, shards.c.id == items.c.shard_id)


def _batch_days(window: Window, postgres: bool) -> sa.Select:
    """Accepted batch items per task and UTC day, with what the answered ones paid and
    would have paid live."""
    stamp = _item_stamp()
    day = _day(stamp, postgres).label("day")
    billed = items.c.status.in_(BILLED_STATES)
    return (sa.select(runs.c.task, day, sa.func.count(),
                      sa.func.sum(sa.case((billed, items.c.cost_picodollars), else_=0)),
                      sa.func.sum(sa.case((billed, items.c.live_cost_picodollars), else_=0)))
            .select_from(_item_source())
            .where(items.c.status != "rejected", stamp >= window.start, stamp < window.end)
            .group_by(runs.c.task, day))


def _live_days(window: Window, postgres: bool) -> sa.Select:
    """Live calls (not deferred) per task and UTC day, with what they paid."""
    day = _day(live_calls.c.created_at, postgres).label("day")
    return (sa.select(live_calls.c.task, day, sa.func.count(),
                      sa.func.sum(live_calls.c.cost_picodollars))
            .where(live_calls.c.answered_by != DEFERRED,
                   live_calls.c.created_at >= window.start,
                   live_calls.c.created_at < window.end)
            .group_by(live_calls.c.task, day))


def _live_usage(window: Window) -> sa.Select:
    """Paid live calls' usage summed per task and model, with the largest prompt."""
    prompt = (live_calls.c.input_tokens + live_calls.c.cached_input_tokens
              + live_calls.c.cache_write_tokens + live_calls.c.cache_write_1h_tokens)
    return (sa.select(live_calls.c.task, live_calls.c.model, sa.func.max(prompt),
                      *(sa.func.sum(live_calls.c[name]) for name in _USAGE_COLUMNS))
            .where(live_calls.c.cost_picodollars > 0,
                   live_calls.c.created_at >= window.start,
                   live_calls.c.created_at < window.end)
            .group_by(live_calls.c.task, live_calls.c.model))


def _at_batch_rates(prices: PriceTable, model: str, total: Usage,
                    max_prompt: int) -> int | None:
    """Summed usage priced at `model`'s batch rates (picodollars), or None when the
    table cannot. Prices are per token, so the sum prices as its calls would; only the
    table's prompt-size tiers are per request, so they are checked on the largest
    prompt alone, then set aside for the sum."""
    try:
        price = prices.price(model)
        price.check(Usage(input_tokens=max_prompt), Lane.BATCH)
        return to_picodollars(replace(price, tier_limits={}).cost_usd(total, Lane.BATCH))
    except ConfigurationError:
        return None


def _duplicates(conn: sa.Connection, window: Window) -> list[Duplicate]:
    """Request content hashes paid (cost above zero) by more than one task or lane in
    the window, grouped by who paid them."""
    stamp = _item_stamp()
    paid = sa.union_all(
        sa.select(live_calls.c.content_hash.label("h"), live_calls.c.task.label("task"),
                  sa.literal("live", sa.String).label("lane"),
                  live_calls.c.cost_picodollars.label("cost"))
        .where(live_calls.c.cost_picodollars > 0, live_calls.c.created_at >= window.start,
               live_calls.c.created_at < window.end),
        sa.select(items.c.content_hash, runs.c.task, sa.literal("batch", sa.String),
                  items.c.cost_picodollars)
        .select_from(_item_source())
        .where(items.c.status.in_(BILLED_STATES), items.c.cost_picodollars > 0,
               items.c.content_hash.is_not(None), stamp >= window.start,
               stamp < window.end)).cte("paid")
    # More than one task or lane: min != max, which (unlike COUNT(DISTINCT)) lets
    # PostgreSQL hash the groups instead of sorting every hash.
    shared = (sa.select(paid.c.h).group_by(paid.c.h)
              .having(sa.or_(sa.func.min(paid.c.task) != sa.func.max(paid.c.task),
                             sa.func.min(paid.c.lane) != sa.func.max(paid.c.lane))))
    per_hash: dict[str, list[tuple[str, str, int, int, int]]] = defaultdict(list)
    for h, task, lane, n, total, cheapest in conn.execute(
            sa.select(paid.c.h, paid.c.task, paid.c.lane, sa.func.count(),
                      sa.func.sum(paid.c.cost), sa.func.min(paid.c.cost))
            .where(paid.c.h.in_(shared)).group_by(paid.c.h, paid.c.task, paid.c.lane)):
        per_hash[h].append((task, lane, int(n), int(total), int(cheapest)))
    groups: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for parts in per_hash.values():
        key = tuple(sorted((task, lane) for task, lane, *_ in parts))
        group = groups[key]
        group[0] += 1
        group[1] += sum(p[2] for p in parts)
        group[2] += sum(p[3] for p in parts) - min(p[4] for p in parts)
    return sorted((Duplicate(key, *values) for key, values in groups.items()),
                  key=lambda d: (-d.extra_picodollars, d.answerers))
