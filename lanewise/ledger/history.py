"""The ledger's history reads and the one history write: runs listed with their totals,
the billed cost of past batches, and forgetting a run that never sent anything.

Part of `Ledger` (mixed in). Reads are a few grouped queries whatever the number of
items (never one query per run or per item); `forget_run` is one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from lanewise.errors import LedgerError, RunBusyError
from lanewise.ledger.schema import items, live_calls, run_item_counts, run_leases, runs, shards
from lanewise.pricing import from_picodollars

#: Item states that carry an answer the provider billed (the only ones with a cost).
BILLED_STATES = ("succeeded", "invalid_output")


@dataclass
class RunOverview:
    """One run's row with its item counts, costs and lease, as `lanewise runs` lists it."""

    run: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    cost_picodollars: int = 0
    live_cost_picodollars: int = 0
    shards: int = 0
    sent_shards: int = 0
    #: The lease of the process driving the run now (None when nobody does).
    lease: dict[str, Any] | None = None


@dataclass(frozen=True)
class ForgottenRun:
    """What `forget_run` removed: the run, and the files it leaves to delete (its shard
    files, and the results file of a run that finished with nothing to send)."""

    run_key: str
    items: int
    shards: int
    shard_urls: list[str]
    results_url: str | None = None


@dataclass(frozen=True)
class BilledCost:
    """Billed items of one shard (or of one run's shardless items), with its date stamp."""

    at: float
    run_key: str
    task: str
    lane: str
    provider: str
    model: str
    requests: int
    cost_picodollars: int
    live_cost_picodollars: int


class HistoryRecords:
    """History reads and `forget_run`; needs the ledger's `engine`, `dialect` and
    `_write`."""

    engine: sa.Engine
    dialect: str
    _write: Callable[[], AbstractContextManager[sa.Connection]]

    def run_overviews(self, limit: int) -> list[RunOverview]:
        """The newest `limit` runs, newest first, each with its item counts by state,
        cost, live cost, shard counts and live lease (three grouped queries)."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                sa.select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings()]
            found = {r["id"]: RunOverview(run=r) for r in rows}
            if not found:
                return []
            ids = list(found)
            for run_id, status, n, cost, live in conn.execute(
                    sa.select(items.c.run_id, items.c.status, sa.func.count(),
                              sa.func.coalesce(sa.func.sum(items.c.cost_picodollars), 0),
                              sa.func.coalesce(sa.func.sum(items.c.live_cost_picodollars), 0))
                    .where(items.c.run_id.in_(ids))
                    .group_by(items.c.run_id, items.c.status)):
                overview = found[run_id]
                overview.counts[status] = int(n)
                overview.cost_picodollars += int(cost)
                overview.live_cost_picodollars += int(live)
            sent = sa.func.sum(sa.case((shards.c.status != "planned", 1), else_=0))
            for run_id, total, sent_count in conn.execute(
                    sa.select(shards.c.run_id, sa.func.count(), sent)
                    .where(shards.c.run_id.in_(ids)).group_by(shards.c.run_id)):
                found[run_id].shards = int(total)
                found[run_id].sent_shards = int(sent_count or 0)
            keys = {r["run_key"]: r["id"] for r in rows}
            for lease in conn.execute(sa.select(run_leases).where(
                    run_leases.c.run_key.in_(list(keys)),
                    run_leases.c.expires_at > time.time())).mappings():
                found[keys[lease["run_key"]]].lease = dict(lease)
        return [found[r["id"]] for r in rows]

    def billed_costs(self, since: float | None = None,
                     until: float | None = None) -> list[BilledCost]:
        """Billed requests of both lanes within [since, until) in epoch seconds.

        Batch items grouped by shard, each group stamped by its batch's end (`ended_at`,
        else `submitted_at`, as reconciliation dates costs; items without a shard by
        their run's end, else its start); only answered items (`BILLED_STATES`) count,
        they are the only ones with a cost. Live calls the provider billed (cost above
        zero: not those answered from the cache or deferred) grouped by task, model and
        UTC hour, stamped at the hour's start, with run key `live`."""
        stamp = sa.func.coalesce(shards.c.ended_at, shards.c.submitted_at,
                                 runs.c.finished_at, runs.c.created_at)
        query = (
            sa.select(stamp.label("at"), runs.c.run_key, runs.c.task, runs.c.lane,
                      runs.c.provider, runs.c.model, sa.func.count().label("requests"),
                      sa.func.sum(items.c.cost_picodollars).label("cost"),
                      sa.func.sum(items.c.live_cost_picodollars).label("live"))
            .select_from(items.join(runs, runs.c.id == items.c.run_id)
                         .outerjoin(shards, shards.c.id == items.c.shard_id))
            .where(items.c.status.in_(BILLED_STATES))
            .group_by(runs.c.id, shards.c.id, stamp, runs.c.run_key, runs.c.task,
                      runs.c.lane, runs.c.provider, runs.c.model)
            .order_by(stamp))
        # The UTC hour: floor on PostgreSQL, whose integer cast rounds; SQLite's truncates
        # (and its floor() is an optional build).
        hours = sa.func.floor(live_calls.c.created_at / 3600) if self.dialect == "postgresql" \
            else sa.cast(live_calls.c.created_at / 3600, sa.Integer)
        hour = sa.cast(hours * 3600, sa.Float)
        live_query = (
            sa.select(hour.label("at"), live_calls.c.task, live_calls.c.provider,
                      live_calls.c.model, sa.func.count().label("requests"),
                      sa.func.sum(live_calls.c.cost_picodollars).label("cost"))
            .where(live_calls.c.cost_picodollars > 0)
            .group_by(hour, live_calls.c.task, live_calls.c.provider, live_calls.c.model))
        if since is not None:
            query = query.where(stamp >= since)
            live_query = live_query.where(live_calls.c.created_at >= since)
        if until is not None:
            query = query.where(stamp < until)
            live_query = live_query.where(live_calls.c.created_at < until)
        with self.engine.connect() as conn:
            found = [BilledCost(at=float(at), run_key=run_key, task=task, lane=lane,
                                provider=provider, model=model, requests=int(n),
                                cost_picodollars=int(cost or 0),
                                live_cost_picodollars=int(live or 0))
                     for at, run_key, task, lane, provider, model, n, cost, live
                     in conn.execute(query)]
            # A live call's all-live cost is what it paid.
            found += [BilledCost(at=float(at), run_key="live", task=task, lane="live",
                                 provider=provider, model=model, requests=int(n),
                                 cost_picodollars=int(cost or 0),
                                 live_cost_picodollars=int(cost or 0))
                      for at, task, provider, model, n, cost in conn.execute(live_query)]
        return sorted(found, key=lambda c: c.at)

    def spend_picodollars(self, task: str, since: float, until: float | None = None) -> int:
        """What `task` paid in both lanes within [since, until) (epoch seconds), dated as
        `billed_costs` dates it: the spend a budget is checked against."""
        stamp = sa.func.coalesce(shards.c.ended_at, shards.c.submitted_at,
                                 runs.c.finished_at, runs.c.created_at)
        batch = (sa.select(sa.func.coalesce(sa.func.sum(items.c.cost_picodollars), 0))
                 .select_from(items.join(runs, runs.c.id == items.c.run_id)
                              .outerjoin(shards, shards.c.id == items.c.shard_id))
                 .where(runs.c.task == task, items.c.status.in_(BILLED_STATES),
                        stamp >= since,
                        # Only runs that may hold such items (a run's batches end before
                        # it finishes): the items read are those runs', by the
                        # (run_id, status) index, not the task's whole history.
                        sa.or_(runs.c.finished_at.is_(None), runs.c.finished_at >= since)))
        live = (sa.select(sa.func.coalesce(sa.func.sum(live_calls.c.cost_picodollars), 0))
                .where(live_calls.c.task == task, live_calls.c.created_at >= since))
        if until is not None:
            batch = batch.where(stamp < until)
            live = live.where(live_calls.c.created_at < until)
        with self.engine.connect() as conn:
            return int(conn.execute(batch).scalar_one()) + int(conn.execute(live).scalar_one())

    def forget_run(self, run_key: str) -> ForgottenRun:
        """Remove a run that never sent anything: its items, shards, lease and the run,
        in one transaction. Refused (LedgerError, saying how many batches were sent and
        what was recorded as paid) once any shard got past `planned`; refused
        (RunBusyError) while a process holds the run's lease. The files are left to the
        caller (`ForgottenRun`), to delete once this committed."""
        with self._write() as conn:
            locked = sa.select(runs).where(runs.c.run_key == run_key)
            if self.dialect == "postgresql":
                # Held to the commit: a planner cannot add items to it meanwhile.
                locked = locked.with_for_update()
            run = conn.execute(locked).mappings().first()
            if run is None:
                raise LedgerError(f"no run {run_key!r} in the ledger")
            lease = conn.execute(sa.select(run_leases).where(
                run_leases.c.run_key == run_key,
                run_leases.c.expires_at > time.time())).mappings().first()
            if lease is not None:
                raise RunBusyError(
                    f"run {run_key!r} is being driven by {lease['holder']} on "
                    f"{lease['host']} (lease until {time.ctime(lease['expires_at'])}); "
                    "stop it, or wait for its lease to lapse, then forget it")
            run_id = run["id"]
            sent = conn.execute(sa.select(shards.c.provider_batch_id, shards.c.status).where(
                shards.c.run_id == run_id, shards.c.status != "planned")).all()
            if sent:
                paid = conn.execute(sa.select(sa.func.coalesce(
                    sa.func.sum(items.c.cost_picodollars), 0)).where(
                    items.c.run_id == run_id)).scalar_one()
                raise LedgerError(_refusal(dict(run), sent, int(paid)))
            shard_urls = list(conn.execute(sa.select(shards.c.jsonl_url).where(
                shards.c.run_id == run_id).order_by(shards.c.id)).scalars())
            removed = conn.execute(items.delete().where(items.c.run_id == run_id)).rowcount
            conn.execute(shards.delete().where(shards.c.run_id == run_id))
            conn.execute(run_leases.delete().where(run_leases.c.run_key == run_key))
            if self.dialect == "postgresql":
                # The triggers left this run's counts at zero; the run is gone.
                conn.execute(run_item_counts.delete().where(
                    run_item_counts.c.run_id == run_id))
            conn.execute(runs.delete().where(runs.c.id == run_id))
        return ForgottenRun(run_key=run_key, items=max(removed, 0), shards=len(shard_urls),
                            shard_urls=shard_urls, results_url=run["results_url"])


def _refusal(run: dict[str, Any], sent: list[Any], paid_picodollars: int) -> str:
    """Why a run that sent batches cannot be forgotten, with what it sent and paid."""
    batch_ids = [batch_id for batch_id, _ in sent if batch_id]
    shown = ", ".join(batch_ids[:3]) + (f" and {len(batch_ids) - 3} more"
                                        if len(batch_ids) > 3 else "")
    then = ("to run its input again, use a new run key (--run-key)"
            if run["status"] == "finished" else
            "rerun it to finish it, or use a new run key (--run-key) for a fresh run")
    return (f"run {run['run_key']!r} cannot be forgotten: {len(sent)} batch(es) were sent "
            f"to the provider{f' ({shown})' if shown else ''} and "
            f"${from_picodollars(paid_picodollars):,.6f} is recorded as paid so far; its "
            f"records are what keeps a rerun from paying for them again. To go on: {then}.")
