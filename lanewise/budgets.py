"""Budgets that hold: a batch run's offline cost estimate, the checks against a task's
budget, and the live lane's stop once a budget is spent.

The estimate of a batch run is made from what planning recorded, before anything is
sent. Every shard holds, in `estimated_tokens`, the SUM of its requests' input-token
estimates (`lanewise.requests.estimate_tokens`, the token rule: prompt and system text,
the output schema, and for an Anthropic JSON task the tool-use system prompt, after
any excerpting); `request_count` is how many requests it holds. So the run's input is
the plain sum of both over its shards still `planned` (items answered from the result
cache are never in a shard: they cost nothing and are not counted). Priced at the
batch rates of the run's model:

* upper bound: every request answers at the task's `max_output_tokens` (a reasoning
  model's reasoning budgeted at the same cap again, as `estimate_output_tokens` does);
* expected: every request answers at the task's measured average output, from its
  newest answered batch items and billed live calls of the last `MEASURE_DAYS` days
  (at most `MEASURE_ANSWERS` of each; the run's model's when it has any, else any
  model's of the task); at the upper bound's output when nothing was measured.

`check_run` refuses a run whose upper bound passes the task's per-run ceiling or what
is left of its daily (UTC day) or monthly (UTC month) budget, before its first batch is
created, and records the estimate on the run either way. The refused run keeps its
plan, so its run key is run again once the budget allows; a run that already sent a
batch was approved and is not checked again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa

from lanewise.errors import BudgetExceededError
from lanewise.ledger.history import BILLED_STATES
from lanewise.ledger.schema import items, live_calls, runs
from lanewise.pricing import Lane, Usage, from_picodollars, to_picodollars
from lanewise.tokens import reasoning_budget_tokens

if TYPE_CHECKING:
    from lanewise.batch.context import LaneContext
    from lanewise.catalog import Catalog, TaskSpec
    from lanewise.ledger import Ledger

#: How far back the measured average output of a task is taken from.
MEASURE_DAYS = 90
#: At most this many of the newest batch answers (and as many live calls) make the
#: measured average: plenty for a stable figure, and cheap at every run's start.
MEASURE_ANSWERS = 20_000
#: The newest runs looked at for them (runs of a queue drain may hold few answers each).
MEASURE_RUNS = 100
DAY_SECONDS = 86400
#: Live calls that billed an answer (not answered from the cache, deferred or failed).
PAID_LIVE_PATHS = ("live", "fallback_model")


def money(amount: Decimal) -> str:
    """USD as lanewise's narrow tables show it (`reporting.money`, imported only when a
    figure is shown: the live lane does not load rich for it)."""
    from lanewise.reporting import money as shown

    return shown(amount)


# --- UTC periods ------------------------------------------------------------------------


def day_start(now: float) -> float:
    """Epoch seconds of the start of the UTC day of `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC).timestamp()


def month_start(now: float) -> float:
    """Epoch seconds of the start of the UTC month of `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


# --- the estimate of a batch run --------------------------------------------------------


@dataclass(frozen=True)
class RunEstimate:
    """What a run's requests still to send are estimated to cost at batch prices."""

    run_key: str
    model: str
    requests: int
    input_tokens: int
    max_output_tokens: int         # per request, reasoning budget included
    measured_output_tokens: float | None  # per answer; None: nothing measured
    upper_picodollars: int
    expected_picodollars: int

    @property
    def upper_usd(self) -> Decimal:
        """The upper bound in USD."""
        return from_picodollars(self.upper_picodollars)

    @property
    def expected_usd(self) -> Decimal:
        """The expected figure in USD."""
        return from_picodollars(self.expected_picodollars)

    def fitting(self, allowed_picodollars: int) -> int:
        """About how many of the requests fit in `allowed_picodollars` at the upper bound
        (requests differ in length: the run's average request)."""
        if self.upper_picodollars <= 0:
            return self.requests
        return max(min(allowed_picodollars * self.requests // self.upper_picodollars,
                       self.requests), 0)

    def line(self) -> str:
        """The estimate in one line."""
        measured = ("nothing measured yet, so at the maximum"
                    if self.measured_output_tokens is None else
                    f"at the measured {self.measured_output_tokens:,.0f} output tokens an "
                    "answer")
        return (f"{self.requests:,} request(s), {self.input_tokens:,} input tokens: "
                f"{money(self.upper_usd)} at most (every answer at {self.max_output_tokens:,} "
                f"output tokens), {money(self.expected_usd)} expected ({measured})")


def measured_output_tokens(ledger: Ledger, task: str, model: str,
                           since: float) -> float | None:
    """The task's average output tokens per billed answer since `since`, over its newest
    answers (at most MEASURE_ANSWERS batch items, from its newest runs, and as many
    billed live calls): its `model`'s when it has any, else any model's; None when none.

    Bounded, because every run's estimate reads it before the first batch: averaging
    every answer of 90 days of a nightly 100,000-row task read millions of rows."""
    by_model: dict[str, list[int]] = {}

    def add(name: str, count: int, total: int | None) -> None:
        found = by_model.setdefault(name, [0, 0])
        found[0] += int(count)
        found[1] += int(total or 0)

    with ledger.engine.connect() as conn:
        newest_runs = conn.execute(
            sa.select(runs.c.id, runs.c.model)
            .where(runs.c.task == task, runs.c.created_at >= since)
            .order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(MEASURE_RUNS)).all()
        left = MEASURE_ANSWERS
        for run_id, run_model in newest_runs:
            if left <= 0:
                break
            answers = (sa.select(items.c.output_tokens)
                       .where(items.c.run_id == run_id, items.c.status.in_(BILLED_STATES))
                       .limit(left).subquery())
            count, total = conn.execute(sa.select(
                sa.func.count(), sa.func.sum(answers.c.output_tokens))).one()
            add(run_model, count, total)
            left -= count
        calls = (sa.select(live_calls.c.model, live_calls.c.output_tokens)
                 .where(live_calls.c.task == task, live_calls.c.created_at >= since,
                        live_calls.c.answered_by.in_(PAID_LIVE_PATHS),
                        live_calls.c.status.in_(BILLED_STATES))
                 .order_by(live_calls.c.created_at.desc()).limit(MEASURE_ANSWERS).subquery())
        for name, count, total in conn.execute(
                sa.select(calls.c.model, sa.func.count(), sa.func.sum(calls.c.output_tokens))
                .group_by(calls.c.model)):
            add(name, count, total)
    count, total = by_model.get(model) or [sum(v[i] for v in by_model.values())
                                           for i in (0, 1)]
    return total / count if count else None


def estimate_run(ctx: LaneContext, run_id: int, now: float | None = None, *,
                 first_round: bool = False) -> RunEstimate:
    """The offline estimate of the run's shards still `planned` (see the module
    docstring), or with `first_round` of every first-round shard, sent or not."""
    run = ctx.ledger.run(run_id)
    model = run["model"]
    waiting = [s for s in ctx.ledger.shards(run_id)
               if (s["attempt"] == 0 if first_round else s["status"] == "planned")]
    requests = sum(s["request_count"] for s in waiting)
    input_tokens = sum(s["estimated_tokens"] for s in waiting)  # already a sum per shard
    reasoning = reasoning_budget_tokens(model, ctx.task.max_output_tokens)
    most = ctx.task.max_output_tokens + reasoning
    since = (time.time() if now is None else now) - MEASURE_DAYS * DAY_SECONDS
    measured = measured_output_tokens(ctx.ledger, ctx.task.name, model, since)
    upper = Usage(input_tokens=input_tokens, output_tokens=most * requests,
                  reasoning_tokens=reasoning * requests)
    # A measured answer already counts its reasoning inside its output tokens.
    each = most if measured is None else min(measured, most)
    expected = Usage(input_tokens=input_tokens, output_tokens=round(each * requests))
    return RunEstimate(
        run_key=run["run_key"], model=model, requests=requests, input_tokens=input_tokens,
        max_output_tokens=most, measured_output_tokens=measured,
        upper_picodollars=to_picodollars(ctx.prices.cost_usd(model, upper, Lane.BATCH)),
        expected_picodollars=to_picodollars(ctx.prices.cost_usd(model, expected,
                                                                Lane.BATCH)))


# --- what a task may still spend --------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """A task's budgets and what it spent this UTC day and month (both lanes)."""

    task: str
    daily_usd: Decimal | None
    spent_today_usd: Decimal
    monthly_usd: Decimal | None
    spent_month_usd: Decimal
    run_ceiling_usd: Decimal | None = None

    @property
    def daily_left_usd(self) -> Decimal | None:
        """What is left of today's budget (negative when overspent), None without one."""
        return None if self.daily_usd is None else self.daily_usd - self.spent_today_usd

    @property
    def monthly_left_usd(self) -> Decimal | None:
        """What is left of this month's budget, None without one."""
        return None if self.monthly_usd is None else self.monthly_usd - self.spent_month_usd


def budget_status(ledger: Ledger, task: TaskSpec, now: float | None = None) -> BudgetStatus:
    """The task's budgets and its spend this UTC day and month."""
    now = time.time() if now is None else now
    budget = task.budget
    today = ledger.spend_picodollars(task.name, day_start(now))
    month = ledger.spend_picodollars(task.name, month_start(now))
    return BudgetStatus(task.name, budget.daily_usd, from_picodollars(today),
                        budget.monthly_usd, from_picodollars(month), budget.run_ceiling_usd)


def budget_statuses(ledger: Ledger, catalog: Catalog,
                    now: float | None = None) -> dict[str, BudgetStatus]:
    """`budget_status` of every catalog task with a budget (any limit), by name."""
    return {name: budget_status(ledger, spec, now) for name, spec in catalog.tasks.items()
            if spec.budget.is_set()}


# --- the check before a batch run sends anything ----------------------------------------


@dataclass(frozen=True)
class _Limit:
    name: str       # per-run ceiling | daily budget | monthly budget
    field: str      # the catalog field that sets it
    limit: Decimal
    spent: Decimal | None  # None for the per-run ceiling
    when: str       # when it starts afresh ("" for the ceiling)

    @property
    def left(self) -> Decimal:
        return self.limit if self.spent is None else self.limit - self.spent

    def text(self) -> str:
        if self.spent is None:
            return f"its {self.name} of {money(self.limit)}"
        return (f"its {self.name} of {money(self.limit)} ({money(self.spent)} spent "
                f"{self.when}, {money(max(self.left, Decimal(0)))} left)")


def already_sent(ctx: LaneContext, run_id: int) -> bool:
    """Whether the run sent anything already (then it was approved when it started)."""
    return any(s["status"] != "planned" or s["attempt"] > 0
               for s in ctx.ledger.shards(run_id))


def check_run(ctx: LaneContext, run_id: int, now: float | None = None) -> RunEstimate | None:
    """Estimate the run, record the estimate on it, and refuse it (BudgetExceededError)
    when its upper bound passes the task's per-run ceiling or what is left of its daily
    or monthly budget. None for a run that already sent something: approved before."""
    if already_sent(ctx, run_id):
        run = ctx.ledger.run(run_id)
        if run["estimate_upper_picodollars"] is None:
            # Sent while it planned (a task with no budget: `may_send_while_planning`):
            # nothing to refuse, but the estimate of its whole first round is recorded.
            _record(ctx, run_id, estimate_run(ctx, run_id, now, first_round=True))
        else:
            ctx.log.info("run %s sent batches already: its estimate (and budget check) "
                         "was made when it started", run["run_key"])
        return None
    now = time.time() if now is None else now
    estimate = _record(ctx, run_id, estimate_run(ctx, run_id, now))
    over = [limit for limit in _limits(ctx, now)
            if estimate.requests and estimate.upper_usd > limit.left]
    if over:  # raised, not logged here: the flow, the drain or the CLI says it once
        raise BudgetExceededError(refusal(ctx, estimate, over), run_key=estimate.run_key,
                                  upper_usd=estimate.upper_usd,
                                  expected_usd=estimate.expected_usd)
    return estimate


def may_send_while_planning(task: TaskSpec) -> bool:
    """Whether a run of `task` may create batches before its planning ends: only when
    the task has no budget at all, as nothing could then refuse the whole run (a task
    with one is checked on its whole plan first, `check_run`)."""
    return not task.budget.is_set()


def _record(ctx: LaneContext, run_id: int, estimate: RunEstimate) -> RunEstimate:
    """Record the run's estimate on it, and say it."""
    ctx.ledger.set_run(run_id, estimate_upper_picodollars=estimate.upper_picodollars,
                       estimate_expected_picodollars=estimate.expected_picodollars)
    ctx.log.info("cost estimate of run %s: %s", estimate.run_key, estimate.line())
    return estimate


def _limits(ctx: LaneContext, now: float) -> list[_Limit]:
    budget = ctx.task.budget
    found = [] if budget.run_ceiling_usd is None else [
        _Limit("per-run ceiling", "run_ceiling_usd", budget.run_ceiling_usd, None, "")]
    for name, field, limit, since, when in (
            ("daily budget", "daily_usd", budget.daily_usd, day_start, "today (UTC)"),
            ("monthly budget", "monthly_usd", budget.monthly_usd, month_start,
             "this month (UTC)")):
        if limit is not None:
            spent = ctx.ledger.spend_picodollars(ctx.task.name, since(now))
            found.append(_Limit(name, field, limit, from_picodollars(spent), when))
    return found


def refusal(ctx: LaneContext, estimate: RunEstimate, over: list[_Limit]) -> str:
    """Why the run is refused, with the figures and how to split it."""
    task = ctx.task.name
    n = estimate.requests
    fit = estimate.fitting(to_picodollars(max(min(limit.left for limit in over),
                                              Decimal(0))))
    # A drain's run carries claimed queue items (lanewise.batch.drain): they go back to
    # the queue, and it is split by claiming fewer, not by dates.
    drain = estimate.run_key.startswith("drain:")
    smaller = (f"drain with a claim size of {fit:,} or less" if drain
               else f"run a shorter --start/--end window of about {fit:,} request(s)")
    split = (f"split it (about {fit:,} of its {n:,} requests fit: {smaller}); or " if fit
             else "")
    fields = " and ".join(f"budget.{limit.field}" for limit in over)
    again = "drain again" if drain else f"rerun run key {estimate.run_key}"
    resets = [f"the next UTC {'day' if limit.field == 'daily_usd' else 'month'}"
              for limit in over if limit.spent is not None]
    later = (f"; or {again} in {' or '.join(resets)}, when the budget starts afresh"
             if len(resets) == len(over) else "")
    none = "" if fit else f" Not one of its {n:,} requests fits in what is left."
    kept = "Its items go back to the queue" if drain else "The run keeps its plan"
    return (f"run {estimate.run_key} of {task} refused before sending anything: "
            f"estimated {money(estimate.upper_usd)} at most, {money(estimate.expected_usd)} "
            f"expected, for {n:,} request(s), which passes "
            f"{' and '.join(limit.text() for limit in over)}.{none} To go on: {split}raise "
            f"{fields} of {task} in the catalog ({ctx.settings.catalog_path}) and "
            f"{again}{later}. {kept}; nothing was sent or paid.")


# --- the live lane's stop ---------------------------------------------------------------


@dataclass
class _Spend:
    day: float         # the UTC day and month these figures are of
    month: float
    today: int         # picodollars
    this_month: int
    read_at: float     # monotonic
    reading: bool = False  # a read from the ledger is under way
    added: int = 0     # this process's costs since that read began


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, daemon=True, name="lanewise-budget-read").start()


class LiveBudgets:
    """What each budgeted task spent this UTC day and month, per process.

    Read from the ledger (`Ledger.spend_picodollars`) on the task's first call, then
    again at most every `refresh_seconds`, in the background (`spawn`): a call never
    waits for that SUM, however large the ledger. This process's own costs are added at
    once; those made while a read is under way are added to its result (one the read
    saw already counts twice until the next read: a stop comes early, never late). A
    new UTC day or month starts its figure at zero until the read. Tasks without a
    daily or monthly budget are never looked up.
    """

    def __init__(self, ledger: Ledger, refresh_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time,
                 spawn: Callable[[Callable[[], None]], None] = _in_thread) -> None:
        self.ledger = ledger
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.now = now
        self.spawn = spawn
        self._spend: dict[str, _Spend] = {}
        self._lock = threading.Lock()

    @staticmethod
    def applies(task: TaskSpec) -> bool:
        """Whether the task has a daily or monthly budget."""
        return task.budget.daily_usd is not None or task.budget.monthly_usd is not None

    def unread(self, task: TaskSpec) -> bool:
        """Whether the task is budgeted and its spend was never read (the first check
        then reads it in the caller: `refresh` first, off an event loop)."""
        return self.applies(task) and task.name not in self._spend

    def refresh(self, task: TaskSpec) -> None:
        """Read the task's spend this UTC day and month from the ledger."""
        with self._lock:
            found = self._spend.get(task.name)
            if found is not None:
                found.reading, found.added = True, 0
        now = self.now()
        day, month = day_start(now), month_start(now)
        try:
            today = self.ledger.spend_picodollars(task.name, day)
            this_month = self.ledger.spend_picodollars(task.name, month)
        except Exception:
            if found is not None:
                found.reading = False  # the old figures stay; the next check tries again
            raise
        with self._lock:
            found = self._spend.get(task.name)
            added = found.added if found is not None else 0
            self._spend[task.name] = _Spend(day, month, today + added, this_month + added,
                                            self.clock())

    def _refresh_quietly(self, task: TaskSpec) -> None:
        try:
            self.refresh(task)
        except Exception as exc:  # noqa: BLE001 - a background read must not kill anything
            logging.getLogger("lanewise.live").warning(
                "could not read the spend of %s for its budget: %s", task.name, exc)

    def stop_reason(self, task: TaskSpec) -> str | None:
        """Why the task may not pay for a call now (its daily or monthly budget is
        spent), else None."""
        if not self.applies(task):
            return None
        spend = self._spend.get(task.name)
        if spend is None:
            self.refresh(task)
            spend = self._spend[task.name]
        else:
            self._keep_fresh(task, spend)
        reasons = []
        for spent, limit, name in ((spend.today, task.budget.daily_usd, "daily"),
                                   (spend.this_month, task.budget.monthly_usd, "monthly")):
            if limit is not None and spent >= to_picodollars(limit):
                reasons.append(f"{money(from_picodollars(spent))} of the {money(limit)} "
                               f"{name} budget spent")
        return f"budget: {'; '.join(reasons)}" if reasons else None

    def _keep_fresh(self, task: TaskSpec, spend: _Spend) -> None:
        """Start a background read when the figures are old or of a past day or month."""
        rolled = self.now() >= spend.day + DAY_SECONDS  # a UTC day is 86,400 epoch seconds
        if not rolled and (spend.reading
                           or self.clock() - spend.read_at < self.refresh_seconds):
            return  # the common case: nothing to do, no lock taken
        with self._lock:
            if rolled:  # a new UTC day (or month): nothing spent in it that we know of yet
                now = self.now()
                spend.day, spend.today = day_start(now), 0
                if month_start(now) != spend.month:
                    spend.month, spend.this_month = month_start(now), 0
            if spend.reading:
                return
            spend.reading = True
        self.spawn(lambda: self._refresh_quietly(task))

    def add(self, task: TaskSpec, cost_picodollars: int) -> None:
        """Count a call this process just paid for (until the next read has it)."""
        if not cost_picodollars or task.name not in self._spend:
            return
        with self._lock:
            spend = self._spend[task.name]
            spend.today += cost_picodollars
            spend.this_month += cost_picodollars
            spend.added += cost_picodollars
