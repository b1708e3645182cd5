"""Draining the deferred-work queue through the batch lane, as a normal run.

A drain, per task:

1. **Resume first.** Every run key that still has `claimed` items of the task (a drain
   that died after claiming, or one still running in another process) is carried
   again before anything new is claimed. Its run is driven by `run_batch_lane` under
   the run key's lease: a run another process is driving right now is refused at once
   (`RunBusyError`) and left to it; a run whose driver died is resumed, and the batch
   lane's resume rules reattach to the batches it created instead of sending them
   again.
2. **Claim.** Up to `LANEWISE_DRAIN_CLAIM_SIZE` queued items (oldest first) become
   `claimed` under a new run key `drain:<task>:<UTC time>-<token>`, with who claimed them
   and when, in ONE transaction. On PostgreSQL the claim is `SELECT ... FOR UPDATE SKIP
   LOCKED`: two drains at once take disjoint items. On SQLite the claim runs under the
   database write lock, one drain after the other.
3. **Carry.** The claimed rows are written as a JSONL input file under the storage root,
   at a path made from the run key alone (`runs/<run key>/queue-input.jsonl`), and run
   through the batch lane with that run key: sharding, crash safety and cost as for any
   run.
4. **Settle.** When the run has finished, each item's outcome (status, output, error,
   cost) is copied onto its queue item, all of the run's items in one transaction.

Crash rules (nothing lost, nothing paid twice):

* killed before the claim commits: nothing changed; the items are still `queued`.
* killed after the claim: the items are `claimed` under run key K and nothing else.
  The next drain resumes K before claiming anything (rule 1): an item is attached to
  exactly one run key from its claim on, and never claimed again.
* killed before the input file was written (or the file was lost): the next drain
  writes it again from the claimed rows, in id order, with the same bytes; the file
  is written to a temporary name and moved into place, so it exists only whole.
* killed anywhere inside the run: the batch lane's own resume rules (one driver per
  run key; intents recorded before each paid call; batches reattached, never
  recreated) apply to K like to any run.
* killed after the run finished but before settling: the next drain finds K finished
  and only settles it. Settling changes only items still `claimed` under K, so doing
  it twice changes nothing.

Budgets: a drain's run is checked against its task's budget like any run, before it
sends anything (`lanewise.budgets`). A refused run K is forgotten and its items go back
to `queued` (in that order: killed in between, the items are still claimed under K and
the next drain carries K again), so a later drain takes them once the budget allows,
or in smaller claims (`claim_size`) that fit; this drain claims nothing more for the
task.

The flow (`flows/drain.py`) drives the run with Prefect tasks (`run_in_prefect`); tests
and the library drive it in this process (`run_locally`).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import WithJsonSchema

from lanewise.batch.context import LaneContext, storage_prefix
from lanewise.batch.flow_params import _blank_is_none, _config
from lanewise.batch.results import RunSummary
from lanewise.batch.runner import run_batch_lane
from lanewise.catalog import load_catalog
from lanewise.errors import BudgetExceededError, LedgerError, RunBusyError
from lanewise.pricing import from_picodollars

if TYPE_CHECKING:
    from prefect.states import State

DRAIN_INPUT = "queue-input.jsonl"
# Why a claimed item the finished run has no item for fails (its row was refused
# before its key could be read, so no result can ever be matched to it).
NO_ITEM = "the drain run has no item for this key (its row was refused before its key " \
          "could be read)"

RunLane = Callable[[LaneContext, str, str], RunSummary]


def run_locally(ctx: LaneContext, run_key: str, input_url: str) -> RunSummary:
    """Drive the drain's run in this process (plain calls, no Prefect)."""
    return run_batch_lane(ctx, run_key, input_url)


def drain_run_key(task: str, now: datetime | None = None) -> str:
    """A new drain run key: `drain:<task>:<UTC time>-<token>` (the token tells apart two
    drains claiming in the same second)."""
    when = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"drain:{task}:{when}-{secrets.token_hex(3)}"


def drain_input_url(ctx: LaneContext, run_key: str) -> str:
    """Where a drain run's input file is: made from the run key alone, so a resumed drain
    finds (or rewrites) the same file the crashed one meant to run."""
    return ctx.storage.url(f"{storage_prefix(run_key)}/{DRAIN_INPUT}")


def claimer() -> str:
    """Who claims: `host:pid:token` (recorded on each claimed item, for people)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class DrainedRun:
    """One drain run key carried by this drain."""

    run_key: str
    resumed: bool  # a run key claimed by an earlier drain
    counts: dict[str, int] = field(default_factory=dict)  # its queue items per status
    cost_usd: Decimal = Decimal(0)  # what its queue items cost
    settled: int = 0  # queue items this drain settled
    summary: RunSummary | None = None
    busy: str | None = None  # another process drives it: the reason it was left alone
    refused: str | None = None  # over the task's budget: why (its items queued again)

    @property
    def items(self) -> int:
        """Queue items attached to the run."""
        return sum(self.counts.values())


@dataclass
class DrainReport:
    """What one drain did for one task."""

    task: str
    runs: list[DrainedRun] = field(default_factory=list)

    @property
    def settled(self) -> int:
        """Queue items this drain brought to their final state."""
        return sum(r.settled for r in self.runs)

    @property
    def cost_usd(self) -> Decimal:
        """What the items this drain settled cost (runs left to another process count 0)."""
        return sum((r.cost_usd for r in self.runs if r.busy is None and r.refused is None),
                   Decimal(0))

    def line(self) -> str:
        """The drain of this task in one line."""
        if not self.runs:
            return f"{self.task}: nothing queued"
        parts = []
        for run in self.runs:
            how = "resumed" if run.resumed else "claimed"
            if run.busy is not None:
                parts.append(f"{run.run_key} ({how}, {run.items} item(s)) is driven by "
                             "another process: left to it")
                continue
            if run.refused is not None:
                parts.append(f"{run.run_key} ({how}) refused: {run.refused}")
                continue
            states = ", ".join(f"{s} {n}" for s, n in sorted(run.counts.items()))
            parts.append(f"{run.run_key} ({how}): {states}; ${run.cost_usd:,.6f}")
        return f"{self.task}: " + "; ".join(parts)

    def brief(self) -> dict[str, Any]:
        """The report as plain data (a flow run's result)."""
        return {"task": self.task, "settled": self.settled, "cost_usd": str(self.cost_usd),
                "runs": [{"run_key": r.run_key, "resumed": r.resumed, "counts": r.counts,
                          "cost_usd": str(r.cost_usd), "busy": r.busy, "refused": r.refused}
                         for r in self.runs]}


def drain_task(ctx: LaneContext, *, claim_size: int | None = None, run: RunLane = run_locally,
               claimed_by: str | None = None) -> DrainReport:
    """Drain the queue of `ctx.task`: resume every unfinished drain run of the task, then
    claim up to `claim_size` queued items and carry them in one new run."""
    task = ctx.task.name
    report = DrainReport(task)
    # Rule 1: resume before claiming. Items claimed by a drain that died stay attached
    # to its run key; carrying that key again (never a new one) is what keeps each item
    # in exactly one run, paid once.
    for run_key in ctx.ledger.unfinished_drain_runs(task):
        report.runs.append(carry(ctx, run_key, run, resumed=True))
    if any(r.refused is not None for r in report.runs):
        return report  # over the task's budget: a new claim would be refused too
    run_key = drain_run_key(task)
    limit = claim_size or ctx.settings.drain_claim_size
    claimed = ctx.ledger.claim_queue_items(task, limit, run_key, claimed_by or claimer())
    if claimed:
        ctx.log.info("claimed %d queued item(s) of %s for run %s", claimed, task, run_key)
        # The claim is committed: from here on a crash leaves the items `claimed` under
        # run_key, and the next drain resumes exactly this run key (rule 1).
        ctx.crash_hook("drain_after_claim")
        report.runs.append(carry(ctx, run_key, run, resumed=False))
    return report


def carry(ctx: LaneContext, run_key: str, run: RunLane, *, resumed: bool) -> DrainedRun:
    """Run one drain run key through the batch lane (unless it finished already), then
    settle its queue items."""
    drained = DrainedRun(run_key, resumed)
    existing = ctx.ledger.run_by_key(run_key)
    if existing is None or existing["status"] != "finished":
        if resumed:
            ctx.log.info("resuming drain run %s (claimed by an earlier drain)", run_key)
        url = write_drain_input(ctx, run_key)
        ctx.crash_hook("drain_after_input")
        try:
            drained.summary = run(ctx, run_key, url)
        except RunBusyError as exc:
            # Another drain drives this run key now (it may have claimed it a moment
            # ago): the lease refused us before anything was touched. It settles it.
            ctx.log.info("drain run %s is driven by another process; left to it: %s",
                         run_key, exc)
            drained.busy = str(exc)
            drained.counts, _ = ctx.ledger.queue_run_totals(run_key)
            return drained
        except BudgetExceededError as exc:
            drained.counts, _ = ctx.ledger.queue_run_totals(run_key)
            drained.refused = str(exc)
            released = release_refused(ctx, run_key)
            ctx.log.warning("drain run %s refused for the budget of %s; %d item(s) queued "
                            "again for a later drain", run_key, ctx.task.name, released)
            return drained
    ctx.crash_hook("drain_before_settle")
    finished = ctx.ledger.run_by_key(run_key)
    # Settled only from a finished run: every item of it is terminal, so no queue item
    # is ever finished with a result that could still change.
    if finished is not None and finished["status"] == "finished":
        drained.settled = ctx.ledger.settle_queue_run(ctx.task.name, run_key, finished["id"],
                                                      NO_ITEM)
    drained.counts, cost = ctx.ledger.queue_run_totals(run_key)
    drained.cost_usd = from_picodollars(cost)
    ctx.log.info("settled %d queue item(s) of drain run %s: %s", drained.settled, run_key,
                 ", ".join(f"{s} {n}" for s, n in sorted(drained.counts.items())))
    return drained


def release_refused(ctx: LaneContext, run_key: str) -> int:
    """Undo a drain run refused for its task's budget (nothing was sent): forget the run,
    then put its claimed items back to `queued`; returns how many. A run another
    process took over meanwhile is left to it (0)."""
    from lanewise.ledger.queue_records import CLAIMED, QUEUED
    from lanewise.ledger.schema import queue_items
    from lanewise.storage import remove_files

    try:
        forgotten = ctx.ledger.forget_run(run_key)
    except (RunBusyError, LedgerError) as exc:
        ctx.log.info("drain run %s kept as it is: %s", run_key, exc)
        return 0
    with ctx.ledger._write() as conn:
        released = conn.execute(queue_items.update().where(
            queue_items.c.run_key == run_key, queue_items.c.status == CLAIMED,
        ).values(status=QUEUED, run_key=None, claimed_by=None, claimed_at=None)).rowcount
    # Its planned shard files and input file are of no use to anyone now.
    remove_files([*forgotten.shard_urls, drain_input_url(ctx, run_key)],
                 **ctx.settings.storage_options())
    return max(released, 0)


def write_drain_input(ctx: LaneContext, run_key: str) -> str:
    """The run key's input file, written from its claimed rows unless it exists; its URL.

    The same claimed rows always make the same bytes (id order, each row's JSON as
    stored), so a file rewritten after a crash is the file the crashed drain wrote.
    Written under a temporary name and moved into place: the file exists only whole,
    so "it exists" means "it is complete".
    """
    url = drain_input_url(ctx, run_key)
    if ctx.storage.exists(url):
        return url
    partial = f"{url}.{secrets.token_hex(4)}.partial"
    with ctx.storage.open(partial, "wb") as handle:
        for _, _, row in ctx.ledger.claimed_rows(run_key):
            handle.write(row.encode("utf-8") + b"\n")
    # Two drains may both write it (one resuming, one that just claimed): same bytes,
    # and the move replaces whole files, so either result is the same file.
    ctx.storage.replace(partial, url)
    return url


# --- the drain-queue flow ------------------------------------------------------------

# Every catalog task may have queued work (the live lane's too: a deferred live request
# is drained at batch prices), built when the flow module is imported.
QueueTask = Enum("QueueTask", {name: name for name in sorted(load_catalog().tasks)}, type=str)


class DrainParams(BaseModel):
    """What one drain-queue flow run drains."""

    model_config = _config("Drain the queue")

    task: Annotated[QueueTask, WithJsonSchema(
        {"type": "string", "enum": [t.value for t in QueueTask]})] | None = Field(
        default=None, title="Task",
        description="Drain only this task's queue. Leave empty for every task with queued "
        "or claimed work.")
    claim_size: int | None = Field(
        default=None, ge=1, title="Claim size",
        description="Most queued items claimed per task by this drain, for one batch-lane "
        "run. Leave empty for LANEWISE_DRAIN_CLAIM_SIZE.")

    _blank = field_validator("task", "claim_size", mode="before")(_blank_is_none)


def drain_run_name() -> str:
    """The flow run's name: `drain-queue <task>` (or `all tasks`)."""
    try:
        from lanewise.batch.flow_params import _raw_params

        task = _raw_params().get("task")
        return f"drain-queue {getattr(task, 'value', task) or 'all tasks'}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "drain-queue"


def drain_in_prefect(raw: Any) -> State:
    """One drain-queue flow run: each task with work drained, its run driven by Prefect
    tasks; the final state's message is the drain in one line."""
    from prefect.logging import get_run_logger
    from prefect.states import Completed

    from lanewise.batch.flow_params import parse
    from lanewise.batch.flow_runs import refused
    from lanewise.batch.prefect_tasks import context_for, run_in_prefect
    from lanewise.batch.progress import RunLog
    from lanewise.errors import ConfigurationError
    from lanewise.ledger import Ledger
    from lanewise.settings import get_settings

    try:
        params = parse(DrainParams, raw)
    except ConfigurationError as exc:
        return refused(exc)
    if params.task is not None:
        tasks = [params.task.value]
    else:
        ledger = Ledger(get_settings().with_blocks().resolved_database_url)
        tasks = ledger.queue_tasks_with_work()
        ledger.engine.dispose()

    def in_prefect(ctx: LaneContext, run_key: str, input_url: str) -> RunSummary:
        return run_in_prefect(ctx.task.name, run_key, input_url, None)

    reports = []
    for task in tasks:
        ctx = context_for(task)
        ctx.log = RunLog()
        reports.append(drain_task(ctx, claim_size=params.claim_size, run=in_prefect))
    line = "; ".join(r.line() for r in reports) or "nothing queued"
    get_run_logger().info("%s", line)
    return Completed(message=line, data=[r.brief() for r in reports])
