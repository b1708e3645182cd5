"""The batch lane's one loop, driven either directly or through Prefect tasks.

`run_batch_lane` decides the order of steps; a `Steps` object says how each step is
executed. `LocalSteps` calls the core functions in this process; the Prefect flow
passes steps that run them as Prefect tasks (one per shard step), so the loop lives
here once and the flow only wires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from lanewise.batch.context import DateWindow, LaneContext
from lanewise.batch.planning import open_run, plan_retries
from lanewise.batch.results import RunSummary, summarize, write_results
from lanewise.batch.steps import await_shard, collect_shard, submit_shard
from lanewise.errors import BatchError, QuotaExhaustedError
from lanewise.ledger.lease import RunLease
from lanewise.ledger.schema import TERMINAL_ITEM_STATES

MAX_ROUNDS = 20


class Steps(Protocol):
    """How each step of a run is executed."""

    def plan(self, run_key: str, input_url: str, window: DateWindow | None) -> int: ...
    def next_shards(self, run_id: int, run_key: str) -> list[int]: ...
    def submit(self, shard_id: int) -> None: ...
    def await_(self, shard_id: int) -> None: ...
    def collect(self, shard_id: int) -> None: ...
    def finish(self, run_id: int) -> RunSummary: ...


def next_shards(ctx: LaneContext, run_id: int, run_key: str) -> list[int]:
    """Plan follow-up shards for retries, then list every shard not yet collected."""
    ctx.ledger.reopen_stranded_shards(run_id)
    plan_retries(ctx, run_id, run_key)
    return [s["id"] for s in ctx.ledger.shards(run_id) if s["status"] != "collected"]


def finish_run(ctx: LaneContext, run_id: int) -> RunSummary:
    """Write the results file, close the run, and summarize it."""
    unfinished = ctx.ledger.unfinished_items(run_id)
    if unfinished:
        raise BatchError(f"run {run_id} still has {unfinished} unfinished items")
    url = write_results(ctx, run_id)
    ctx.ledger.set_run(run_id, status="finished", results_url=url, finished_at=time.time())
    return summarize(ctx.ledger, run_id)


@dataclass
class LocalSteps:
    """Every step as a plain call in this process (no Prefect)."""

    ctx: LaneContext

    def plan(self, run_key: str, input_url: str, window: DateWindow | None) -> int:
        return open_run(self.ctx, run_key, input_url, window)

    def next_shards(self, run_id: int, run_key: str) -> list[int]:
        return next_shards(self.ctx, run_id, run_key)

    def submit(self, shard_id: int) -> None:
        submit_shard(self.ctx, shard_id)

    def await_(self, shard_id: int) -> None:
        await_shard(self.ctx, shard_id)

    def collect(self, shard_id: int) -> None:
        collect_shard(self.ctx, shard_id)

    def finish(self, run_id: int) -> RunSummary:
        return finish_run(self.ctx, run_id)


def run_batch_lane(ctx: LaneContext, run_key: str, input_url: str,
                   window: DateWindow | None = None, steps: Steps | None = None) -> RunSummary:
    """Run (or resume) one batch-lane run to the end: every row ends terminal.

    The whole run happens under the run key's lease: one process drives a run key at a
    time, and a second one is told who does (RunBusyError) before it touches anything.
    """
    steps = steps or LocalSteps(ctx)
    with RunLease(ctx.ledger, run_key, ttl=ctx.settings.lease_seconds,
                  wait_seconds=ctx.settings.lease_wait_seconds) as lease:
        ctx.lease = lease
        try:
            return _drive(ctx, steps, run_key, input_url, window)
        except QuotaExhaustedError as exc:
            # Out of credit: stop the run as it stands (nothing failed); the message
            # names the run key whose rerun resumes it.
            raise exc.for_run(run_key) from exc.__cause__  # named; same cause
        finally:
            ctx.lease = None


def _drive(ctx: LaneContext, steps: Steps, run_key: str, input_url: str,
           window: DateWindow | None) -> RunSummary:
    # Before every step: stop if this process no longer surely holds the run's lease.
    still_driving = ctx.lease.ensure if ctx.lease is not None else (lambda: None)
    run_id = steps.plan(run_key, input_url, window)
    _report(ctx, run_id)
    for _ in range(MAX_ROUNDS):
        still_driving()
        shard_ids = steps.next_shards(run_id, run_key)
        if not shard_ids:
            break
        for wave in waves(ctx, shard_ids):
            for shard_id in wave:
                steps.submit(shard_id)  # checks the lease itself, in the claim
            for shard_id in wave:
                still_driving()
                steps.await_(shard_id)
                still_driving()
                steps.collect(shard_id)
                _report(ctx, run_id)
    else:
        raise BatchError(f"run {run_key} did not settle after {MAX_ROUNDS} rounds")
    still_driving()
    return steps.finish(run_id)


def waves(ctx: LaneContext, shard_ids: list[int]) -> list[list[int]]:
    """Group shards so the estimated tokens in flight stay within the enqueued budget.

    A provider with a per-model enqueued-token limit (OpenAI) fails a batch that would
    pass it (`token_limit_exceeded`), so shards go in waves whose estimates add up to
    at most the budget; each shard alone already fits. Without a limit, one wave.
    """
    if ctx.token_budget is None:
        return [shard_ids]
    groups: list[list[int]] = []
    in_flight = 0
    for shard_id in shard_ids:
        tokens = ctx.ledger.shard(shard_id)["estimated_tokens"]
        if groups and in_flight + tokens <= ctx.token_budget:
            groups[-1].append(shard_id)
            in_flight += tokens
        else:
            groups.append([shard_id])
            in_flight = tokens
    return groups


def _report(ctx: LaneContext, run_id: int) -> None:
    counts = ctx.ledger.count_items(run_id)
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in TERMINAL_ITEM_STATES)
    ctx.progress(done, total, ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
