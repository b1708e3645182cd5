"""The ledger's side of a reconciliation: what lanewise recorded, per UTC day, model
and lane.

An item's cost is dated by its shard's batch: when lanewise saw the batch end
(`ended_at`), or when it was submitted if it never was seen ending. Items are the batch
lane's (the only lane the ledger records today), at the batch rates the provider bills.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from lanewise.ledger import Ledger
from lanewise.ledger.schema import items, runs, shards
from lanewise.reconcile.reports import BATCH, base_model

LedgerKey = tuple[str, date, str, str]  # provider, UTC day, model, lane


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def ledger_costs(ledger: Ledger, start: date, end: date,
                 providers: list[str] | None = None) -> dict[LedgerKey, int]:
    """Picodollars the ledger recorded for the UTC days `start`..`end` (inclusive), by
    (provider, day, model, lane)."""
    stamp = sa.func.coalesce(shards.c.ended_at, shards.c.submitted_at)
    query = (
        sa.select(stamp.label("at"), runs.c.provider, runs.c.model,
                  sa.func.sum(items.c.cost_picodollars).label("cost"))
        .select_from(items.join(shards, items.c.shard_id == shards.c.id)
                     .join(runs, runs.c.id == items.c.run_id))
        .where(stamp >= _epoch(start), stamp < _epoch(end + timedelta(days=1)),
               items.c.cost_picodollars != 0)
        .group_by(shards.c.id, stamp, runs.c.provider, runs.c.model))
    if providers:
        query = query.where(runs.c.provider.in_(providers))
    totals: dict[LedgerKey, int] = defaultdict(int)
    with ledger.engine.connect() as conn:
        for at, provider, model, cost in conn.execute(query):
            day = datetime.fromtimestamp(at, UTC).date()
            totals[(provider, day, base_model(model), BATCH)] += int(cost or 0)
    return dict(totals)
