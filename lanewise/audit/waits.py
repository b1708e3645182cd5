"""How long requests waited, measured one way for the audit and for `lanewise whatif`
(which reads its waits through these same queries, so the two cannot drift apart).

* Live: a call's latency (retries and fallbacks included), for every call answered or
  failed on the spot; a deferred call waits as the batch item that answered it.
* Batch: from when the item was enqueued (a drain run's queue item) or else its run was
  planned, to its batch's end (`shards.ended_at`), for items whose batch ended in the
  window with their result (an answer or an error). The wait for the run itself (a
  nightly run answers a morning request the next night) is not in it.

p50 and p95 are interpolated linearly between ranks: PostgreSQL's `percentile_cont`, in
SQL there; SQLite has no percentile function, so there the one column of waits is
streamed, sorted by the database, and interpolated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from lanewise.ledger import Ledger
from lanewise.ledger.history import BILLED_STATES
from lanewise.ledger.schema import items, live_calls, queue_items, runs, shards

#: Live calls answered by the queue, not on the spot: counted once, as the batch item
#: that answered them, never as live traffic too.
DEFERRED = "deferred"
#: Batch items whose batch ended with their result (an answer or an error): the wait.
WAITED_STATES = (*BILLED_STATES, "failed")


@dataclass(frozen=True)
class WaitQuery:
    """Where one lane's waits are read: the task column, the wait in seconds, the
    filters that pick the window's requests, and the tables they come from."""

    task: sa.ColumnElement
    seconds: sa.ColumnElement
    filters: tuple[sa.ColumnElement, ...]
    source: sa.FromClause


@dataclass(frozen=True)
class Percentiles:
    """How many requests waited, and their p50 and p95 in seconds."""

    count: int
    p50: float
    p95: float


def live_waits(start: float, end: float) -> WaitQuery:
    """Live calls made in [start, end) and answered or failed on the spot."""
    return WaitQuery(live_calls.c.task, live_calls.c.latency_ms / 1000.0, (
        live_calls.c.answered_by != DEFERRED, live_calls.c.created_at >= start,
        live_calls.c.created_at < end), live_calls)


def batch_waits(start: float, end: float) -> WaitQuery:
    """Batch items whose batch ended in [start, end) with their result: from enqueue
    (or else their run's planning) to their batch's end."""
    queued = sa.and_(queue_items.c.run_key == runs.c.run_key,
                     queue_items.c.task == runs.c.task,
                     queue_items.c.key == items.c.input_key)
    wait = shards.c.ended_at - sa.func.coalesce(queue_items.c.created_at, runs.c.created_at)
    source = (items.join(runs, runs.c.id == items.c.run_id)
              .join(shards, shards.c.id == items.c.shard_id)
              .outerjoin(queue_items, queued))
    return WaitQuery(runs.c.task, wait, (
        items.c.status.in_(WAITED_STATES), shards.c.ended_at >= start,
        shards.c.ended_at < end), source)


def percentiles(conn: sa.Connection, postgres: bool, query: WaitQuery, *,
                by: sa.ColumnElement | None = None,
                where: Sequence[sa.ColumnElement] = ()) -> Iterable[tuple[str, Percentiles]]:
    """(group, its percentiles) of `query`'s waits, grouped by task (or `by`, e.g. the
    model), with `where` narrowing the query's own filters."""
    group = query.task if by is None else by
    filters = (*query.filters, *where)
    if postgres:
        select = sa.select(group, sa.func.count(),
                           sa.func.percentile_cont(0.5).within_group(query.seconds),
                           sa.func.percentile_cont(0.95).within_group(query.seconds))
        for name, n, p50, p95 in conn.execute(select.select_from(query.source)
                                              .where(*filters).group_by(group)):
            yield name, Percentiles(int(n), float(p50), float(p95))
        return
    current, values = None, []
    select = sa.select(group, query.seconds).select_from(query.source).where(*filters)
    for name, v in conn.execute(select.order_by(group, query.seconds)):
        if name != current and values:
            yield current, _of(values)
            values = []
        current = name
        values.append(float(v))
    if values:
        yield current, _of(values)


def measured_waits(ledger: Ledger, query: WaitQuery, *, by: sa.ColumnElement | None = None,
                   where: Sequence[sa.ColumnElement] = ()) -> dict[str, Percentiles]:
    """`percentiles` on the ledger, as a dict by group."""
    with ledger.engine.connect() as conn:
        return dict(percentiles(conn, ledger.dialect == "postgresql", query, by=by,
                                where=where))


def _of(ordered: list[float]) -> Percentiles:
    return Percentiles(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.95))


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated between the two nearest ranks."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
