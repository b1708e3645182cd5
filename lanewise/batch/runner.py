"""The batch lane's one loop, driven either directly or through Prefect tasks.

`run_batch_lane` decides the order of steps; a `Steps` object says how each step is
executed. `LocalSteps` calls the core functions in this process; the Prefect flow
passes steps that run them as Prefect tasks (one per shard step), so the loop lives
here once and the flow only wires.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from lanewise.batch.context import BATCH_SECONDS, DateWindow, LaneContext
from lanewise.batch.plan_ahead import take_lease
from lanewise.batch.planning import open_run, plan_retries
from lanewise.batch.results import RunSummary, summarize, write_results
from lanewise.batch.steps import await_any, collect_shard, submit_shard
from lanewise.budgets import check_run
from lanewise.errors import BatchError, QuotaExhaustedError
from lanewise.ledger.lease import RunLease
from lanewise.ledger.schema import TERMINAL_ITEM_STATES

MAX_ROUNDS = 20
REPORT_SECONDS = 1.0


class Steps(Protocol):
    """How each step of a run is executed."""

    def plan(self, run_key: str, input_url: str, window: DateWindow | None) -> int: ...
    def next_shards(self, run_id: int, run_key: str) -> list[int]: ...
    def submit(self, shard_id: int) -> None: ...
    def await_any(self, shard_ids: list[int]) -> list[int]: ...
    def collect(self, shard_id: int) -> str: ...
    def finish(self, run_id: int) -> RunSummary: ...


def next_shards(ctx: LaneContext, run_id: int, run_key: str) -> list[int]:
    """Plan follow-up shards for retries, then list every shard not yet collected."""
    ctx.ledger.reopen_stranded_shards(run_id)
    plan_retries(ctx, run_id, run_key)
    return uncollected_shards(ctx, run_id)


def uncollected_shards(ctx: LaneContext, run_id: int) -> list[int]:
    """Ids of the run's shards not yet collected (what a `Pipeline` takes in)."""
    return [s["id"] for s in ctx.ledger.shards(run_id) if s["status"] != "collected"]


def finish_run(ctx: LaneContext, run_id: int) -> RunSummary:
    """Write the results file, close the run, and summarize it."""
    unfinished = ctx.ledger.unfinished_items(run_id)
    if unfinished:
        raise BatchError(f"run {run_id} still has {unfinished} unfinished items")
    url = write_results(ctx, run_id)
    ctx.ledger.set_run(run_id, status="finished", results_url=url, finished_at=time.time())
    _learn_batch_seconds(ctx, run_id)
    return summarize(ctx.ledger, run_id)


def _learn_batch_seconds(ctx: LaneContext, run_id: int) -> None:
    """Remember how long this run's slowest batch took, creation to end, so the next run
    of the model sizes its shards for it (`LaneContext.shard_token_cap`)."""
    took = [s["ended_at"] - s["submitted_at"] for s in ctx.ledger.shards(run_id)
            if s["ended_at"] is not None and s["submitted_at"] is not None]
    if took:
        ctx.ledger.learn_limit(ctx.task.provider, ctx.task.model, BATCH_SECONDS,
                               math.ceil(max(max(took), 0)))


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

    def await_any(self, shard_ids: list[int]) -> list[int]:
        return await_any(self.ctx, shard_ids)

    def collect(self, shard_id: int) -> str:
        return collect_shard(self.ctx, shard_id)

    def finish(self, run_id: int) -> RunSummary:
        return finish_run(self.ctx, run_id)


def run_batch_lane(ctx: LaneContext, run_key: str, input_url: str,
                   window: DateWindow | None = None, steps: Steps | None = None) -> RunSummary:
    """Run (or resume) one batch-lane run to the end: every row ends terminal.

    The whole run happens under the run key's lease: one process drives a run key at a
    time, and a second one is told who does (RunBusyError) before it touches anything.
    After planning and before its first batch, the run's cost estimate is checked
    against the task's budget (`lanewise.budgets.check_run`): a run over it stops with
    BudgetExceededError, nothing sent, its plan kept for a rerun of the run key.
    """
    steps = steps or LocalSteps(ctx)
    # A head start (plan_ahead) holds the lease already: keep it rather than release
    # and retake, so no other process can take the run key in between.
    lease = take_lease(run_key) or RunLease(
        ctx.ledger, run_key, ttl=ctx.settings.lease_seconds,
        wait_seconds=ctx.settings.lease_wait_seconds).acquire()
    ctx.lease = lease
    try:
        return _drive(ctx, steps, run_key, input_url, window)
    except QuotaExhaustedError as exc:
        # Out of credit: stop the run as it stands (nothing failed); the message
        # names the run key whose rerun resumes it.
        raise exc.for_run(run_key) from exc.__cause__  # named; same cause
    finally:
        ctx.lease = None
        _release(lease)


def _drive(ctx: LaneContext, steps: Steps, run_key: str, input_url: str,
           window: DateWindow | None) -> RunSummary:
    # Before every step: stop if this process no longer surely holds the run's lease.
    still_driving = ctx.lease.ensure if ctx.lease is not None else (lambda: None)
    run_id = steps.plan(run_key, input_url, window)
    _report(ctx, run_id)
    # Before the first batch is created: the cost estimate, checked against the task's
    # budget (a run that already sent something was approved then and goes on).
    check_run(ctx, run_id)
    for _ in range(MAX_ROUNDS):
        still_driving()
        shard_ids = steps.next_shards(run_id, run_key)
        if not shard_ids:
            break
        Pipeline(ctx, steps, run_id, still_driving).run(shard_ids)
    else:
        raise BatchError(f"run {run_key} did not settle after {MAX_ROUNDS} rounds")
    _report(ctx, run_id)
    still_driving()
    return steps.finish(run_id)


@dataclass
class Pipeline:
    """Sends a round's shards as the enqueued-token budget allows and collects each
    batch as soon as it ends, while the others run.

    A running tally of the estimated tokens in flight decides: the next shard is sent
    the moment it fits (or when nothing is in flight, since each shard alone fits).
    When batches end, the next shards are sent first and the ended ones collected
    after, so the provider works while this process collects.
    """

    ctx: LaneContext
    steps: Steps
    run_id: int
    still_driving: Callable[[], None]
    waiting: deque[int] = field(default_factory=deque)
    in_flight: dict[int, int] = field(default_factory=dict)  # shard id -> est. tokens
    ended: list[int] = field(default_factory=list)
    tokens: dict[int, int] = field(default_factory=dict)
    refusals: int = 0  # consecutive enqueued-limit refusals with nothing else in flight
    refused_since: float | None = None
    # After a refusal with batches in flight: send nothing until one of them ends.
    blocked: bool = False
    reported_at: float = 0.0

    def load(self, shard_ids: list[int]) -> None:
        """Take these shards in, each where its state puts it: to send, in flight, or
        ended (to collect)."""
        for shard_id in shard_ids:
            shard = self.ctx.ledger.shard(shard_id)
            self.tokens[shard_id] = shard["estimated_tokens"]
            if shard["status"] in ("planned", "submitting"):
                self.waiting.append(shard_id)
            elif shard["status"] == "submitted":
                self.in_flight[shard_id] = shard["estimated_tokens"]
            else:  # ended or failed: its batch is over, collect it
                self.ended.append(shard_id)

    def send_what_fits(self) -> None:
        """Send the waiting shards that fit the enqueued-token budget now, in order (the
        first always, when nothing is in flight); the head start's first wave."""
        self._send_what_fits()

    def run(self, shard_ids: list[int]) -> None:
        """Drive these shards until every one is collected."""
        self.load(shard_ids)
        while self.waiting or self.in_flight or self.ended:
            self._send_what_fits()
            self._collect_ended()
            if self.in_flight:
                self.still_driving()
                for shard_id in self.steps.await_any(list(self.in_flight)):
                    del self.in_flight[shard_id]
                    self.ended.append(shard_id)

    def _fits(self, shard_id: int) -> bool:
        budget = self.ctx.token_budget
        return (budget is None or not self.in_flight
                or sum(self.in_flight.values()) + self.tokens[shard_id] <= budget)

    def _send_what_fits(self) -> None:
        while self.waiting and not self.blocked and self._fits(self.waiting[0]):
            shard_id = self.waiting.popleft()
            self.steps.submit(shard_id)  # checks the lease itself, in the claim
            self.in_flight[shard_id] = self.tokens[shard_id]

    def _collect_ended(self) -> None:
        while self.ended:
            shard_id = self.ended.pop(0)
            self.still_driving()
            if self.steps.collect(shard_id) == "planned":
                # Refused for the enqueued-token limit: first in line once room frees.
                self.waiting.appendleft(shard_id)
                self._after_refusal()
            else:
                self.refusals, self.refused_since, self.blocked = 0, None, False
                # Counting a run's items costs time proportional to the run: report at
                # most every REPORT_SECONDS, so small shards do not make it quadratic.
                if time.monotonic() - self.reported_at >= REPORT_SECONDS:
                    _report(self.ctx, self.run_id)
                    self.reported_at = time.monotonic()

    def _after_refusal(self) -> None:
        """With batches of this run in flight, room frees when one ends. With none, the
        limit is full of other work on the account: wait, longer each time."""
        if self.in_flight:
            self.blocked = True
            return
        now = time.time()
        self.refused_since = self.refused_since or now
        if now - self.refused_since > self.ctx.settings.batch_timeout_hours * 3600:
            raise BatchError("the provider kept refusing batches for its enqueued-token "
                             f"limit for {self.ctx.settings.batch_timeout_hours} h")
        self.refusals += 1
        settings = self.ctx.settings
        self.ctx.sleep(min(settings.poll_max_seconds,
                           settings.poll_initial_seconds * 4 * 2 ** min(self.refusals, 10)))


def _release(lease: RunLease) -> None:
    try:
        lease.release()
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
        logging.getLogger(__name__).warning("could not release the lease of run %s: %s",
                                            lease.run_key, exc)


def _report(ctx: LaneContext, run_id: int) -> None:
    counts = ctx.ledger.count_items(run_id)
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in TERMINAL_ITEM_STATES)
    ctx.progress(done, total, ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
