"""The ledger reads a what-if stands on: a task's billed usage, measured waits, and its
requests that can be sent again. Grouped queries; nothing here writes.

Dates follow `Ledger.billed_costs` (and the audit): a batch item is dated by its batch's
end (else its submission, else its run's end, else its run's start), a live call by
when it was made. Waits are the audit's (`lanewise.audit.waits`): the same queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from lanewise.audit.waits import Percentiles, batch_waits, live_waits, measured_waits
from lanewise.ledger import Ledger
from lanewise.ledger.history import BILLED_STATES
from lanewise.ledger.schema import items, live_calls, runs, shards
from lanewise.usage import Usage

#: Usage columns in `Usage`'s field order.
USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                "cache_write_1h_tokens", "reasoning_tokens")
#: Live calls answered by a provider's model (not the cache, not deferred, not failed).
MODEL_ANSWERS = ("live", "fallback_model")

_ITEM_STAMP = sa.func.coalesce(shards.c.ended_at, shards.c.submitted_at, runs.c.finished_at,
                               runs.c.created_at)


@dataclass(frozen=True)
class UsageGroup:
    """Billed requests of one lane, provider and model that billed the same usage."""

    lane: str
    provider: str
    model: str
    usage: Usage
    requests: int
    cost_picodollars: int


def _items_of_runs() -> Any:
    return (items.join(runs, runs.c.id == items.c.run_id)
            .outerjoin(shards, shards.c.id == items.c.shard_id))


def billed_usage(ledger: Ledger, task: str, since: float, until: float) -> list[UsageGroup]:
    """The task's billed requests in [since, until), both lanes, grouped by lane,
    provider, model and usage (so each distinct usage is priced once)."""
    item_usage = [getattr(items.c, name) for name in USAGE_FIELDS]
    batch = (sa.select(runs.c.lane, runs.c.provider, runs.c.model, *item_usage,
                       sa.func.count(), sa.func.sum(items.c.cost_picodollars))
             .select_from(_items_of_runs())
             .where(runs.c.task == task, items.c.status.in_(BILLED_STATES),
                    _ITEM_STAMP >= since, _ITEM_STAMP < until)
             .group_by(runs.c.lane, runs.c.provider, runs.c.model, *item_usage))
    call_usage = [getattr(live_calls.c, name) for name in USAGE_FIELDS]
    live = (sa.select(sa.literal("live"), live_calls.c.provider, live_calls.c.model,
                      *call_usage, sa.func.count(), sa.func.sum(live_calls.c.cost_picodollars))
            .where(live_calls.c.task == task, live_calls.c.cost_picodollars > 0,
                   live_calls.c.created_at >= since, live_calls.c.created_at < until)
            .group_by(live_calls.c.provider, live_calls.c.model, *call_usage))
    found: list[UsageGroup] = []
    with ledger.engine.connect() as conn:
        for query in (batch, live):
            for row in conn.execute(query):
                lane, provider, model, *rest = row
                counts, n, cost = rest[:len(USAGE_FIELDS)], rest[-2], rest[-1]
                found.append(UsageGroup(str(lane), provider, model,
                                        Usage(*(int(c or 0) for c in counts)), int(n),
                                        int(cost or 0)))
    return found


def measured_wait(ledger: Ledger, lane: str, since: float, until: float, *,
                  task: str | None = None, model: str | None = None) -> Percentiles | None:
    """How long a lane's requests in [since, until) waited, by the audit's queries and
    percentiles (`lanewise.audit.waits`): a task's requests, or a model's (live: the
    calls it answered); None when none did."""
    if lane == "live":
        query, owner = live_waits(since, until), live_calls.c
        answered = [] if task is not None else [owner.answered_by.in_(MODEL_ANSWERS)]
    else:
        query, owner, answered = batch_waits(since, until), runs.c, []
    column, key = (owner.task, task) if task is not None else (owner.model, model)
    return measured_waits(ledger, query, by=column,
                          where=[column == key, *answered]).get(key or "")


def first_record(ledger: Ledger) -> float | None:
    """When the ledger's history starts: its first run or live call (epoch seconds)."""
    with ledger.engine.connect() as conn:
        found = [conn.execute(sa.select(sa.func.min(runs.c.created_at))).scalar_one(),
                 conn.execute(sa.select(sa.func.min(live_calls.c.created_at))).scalar_one()]
    known = [float(x) for x in found if x is not None]
    return min(known) if known else None


@dataclass(frozen=True)
class Candidate:
    """A recorded request of a task that may be sent again."""

    at: float
    ref: str                     # live:<id> or item:<id>
    content_hash: str | None
    row: dict[str, Any] | None   # a live call's input row
    input_url: str | None        # a batch item's run input, and its row there
    row_number: int | None


def candidates(ledger: Ledger, task: str, limit: int) -> list[Candidate]:
    """The task's most recent requests that carry their input, newest first, at most
    `limit` of each lane: live calls with their recorded row, batch items (not
    rejected) with their run's input file and row number."""
    live = (sa.select(live_calls.c.id, live_calls.c.created_at, live_calls.c.content_hash,
                      live_calls.c.request_row)
            .where(live_calls.c.task == task, live_calls.c.request_row.is_not(None))
            .order_by(live_calls.c.created_at.desc(), live_calls.c.id.desc()).limit(limit))
    at = sa.func.coalesce(shards.c.submitted_at, runs.c.created_at)
    batch = (sa.select(items.c.id, at, items.c.content_hash, runs.c.input_url,
                       items.c.row_number)
             .select_from(_items_of_runs())
             .where(runs.c.task == task, items.c.status != "rejected")
             .order_by(at.desc(), items.c.row_number.desc()).limit(limit))
    found: list[Candidate] = []
    with ledger.engine.connect() as conn:
        for call_id, created, content_hash, request_row in conn.execute(live):
            try:
                row = json.loads(request_row)
            except ValueError:
                continue
            if isinstance(row, dict):
                found.append(Candidate(float(created), f"live:{call_id}", content_hash, row,
                                       None, None))
        for item_id, stamp, content_hash, url, number in conn.execute(batch):
            found.append(Candidate(float(stamp), f"item:{item_id}", content_hash, None, url,
                                   int(number)))
    return sorted(found, key=lambda c: c.at, reverse=True)
