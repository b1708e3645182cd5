"""The batch lane's steps as Prefect tasks: one task per shard step, never per request.

Tasks take plain ids (not contexts) so Prefect can record their parameters; each
builds its lane context from the settings once per process. Task runs are named from
the shard (`submit ticket-tagging r0 #3`: task, round, shard number), read from the
ledger's shard row when the task run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

# context_for lives in the context module (the CLI builds a context before it imports
# Prefect) and is used from here by the name it always had: one cache either way.
from lanewise.batch import plan_ahead
from lanewise.batch.context import DateWindow, LaneContext, context_for
from lanewise.batch.planning import open_run
from lanewise.batch.progress import PrefectProgress, RunLog, artifact_key
from lanewise.batch.results import RunSummary
from lanewise.batch.runner import finish_run, next_shards, run_batch_lane
from lanewise.batch.steps import await_any, collect_shard, submit_shard
from lanewise.errors import QuotaExhaustedError, TransientProviderError
from lanewise.pricing import from_picodollars

RETRY_DELAYS = [5, 30, 120]
LANE = "batch"


def _transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry a step only for failures worth retrying (rate limits, 5xx, network); never
    an account out of credit (QuotaExhaustedError), which stops the run instead."""
    try:
        state.result()
    except QuotaExhaustedError:
        return False
    except (TransientProviderError, ConnectionError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth a retry
        return False
    return False


def shard_label(task_name: str, shard_id: int) -> str:
    """A shard as people name it: task, round and shard number (`ticket-tagging r0 #3`)."""
    shard = context_for(task_name).ledger.shard(shard_id)
    number = shard["shard_key"].rsplit("/s", 1)[-1]
    return f"{task_name} r{shard['attempt']} #{number}"


def _shard_run_name(step: str) -> Callable[..., str]:
    """A task_run_name callable: `<step> <task> r<round> #<number>`."""

    def name(parameters: dict[str, Any]) -> str:
        try:
            return f"{step} {shard_label(parameters['task_name'], parameters['shard_id'])}"
        except Exception:  # noqa: BLE001 - a name must never stop a step
            return f"{step} shard {parameters.get('shard_id')}"

    return name


def _await_run_name(parameters: dict[str, Any]) -> str:
    count = len(parameters.get("shard_ids") or [])
    return f"await {parameters.get('task_name')} {count} batch{'es' if count != 1 else ''}"


step = task(cache_policy=NO_CACHE, retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
            retry_condition_fn=_transient)


@step(name="plan-run", task_run_name="plan {run_key}")
def plan_run_task(task_name: str, run_key: str, input_url: str, start: date | None,
                  end: date | None) -> int:
    """Open or resume the run and plan its shards; record the flow run driving it."""
    ctx = context_for(task_name)
    window = DateWindow(start, end) if start and end else None
    try:
        return open_run(ctx, run_key, input_url, window)
    finally:
        # Even when planning fails (a bad input), the run links to the flow run that tried.
        _link_flow_run(ctx, run_key)


def _link_flow_run(ctx: LaneContext, run_key: str) -> None:
    """Record the current Prefect flow run as the one driving the run."""
    from prefect.runtime import flow_run

    run = ctx.ledger.run_by_key(run_key)
    flow_run_id = flow_run.id
    if run is not None and flow_run_id:
        ctx.ledger.set_run(run["id"], prefect_flow_run_id=str(flow_run_id))


@step(name="next-shards", task_run_name="next-shards {task_name}")
def next_shards_task(task_name: str, run_id: int, run_key: str) -> list[int]:
    """Plan retry shards and list the shards still to do."""
    return next_shards(context_for(task_name), run_id, run_key)


@step(name="submit-shard", task_run_name=_shard_run_name("submit"))
def submit_shard_task(task_name: str, shard_id: int) -> None:
    """Create the shard's provider batch unless it exists."""
    submit_shard(context_for(task_name), shard_id)


@step(name="await-batches", task_run_name=_await_run_name)
def await_any_task(task_name: str, shard_ids: list[int]) -> list[int]:
    """Poll the in-flight batches until at least one ends; returns those shards."""
    return await_any(context_for(task_name), shard_ids)


@step(name="collect-shard", task_run_name=_shard_run_name("collect"))
def collect_shard_task(task_name: str, shard_id: int) -> str:
    """Record the shard's results in the ledger; returns its status after."""
    return collect_shard(context_for(task_name), shard_id)


@step(name="finish-run", task_run_name="finish {task_name}")
def finish_run_task(task_name: str, run_id: int, spent_before_picodollars: int) -> RunSummary:
    """Write the results file and publish the cost artifacts (stable keys per task and
    lane, so each night adds a version to the task's history)."""
    ctx = context_for(task_name)
    summary = finish_run(ctx, run_id)
    summary.attempt_cost_usd = summary.cost_usd - from_picodollars(spent_before_picodollars)
    publish_summary(summary)
    return summary


def publish_summary(summary: RunSummary) -> None:
    """The run's cost table and markdown summary as artifacts under stable keys."""
    attempt = summary.attempt_cost_usd if summary.attempt_cost_usd is not None else Decimal(0)
    label = f"{summary.task} {summary.window}" if summary.window else summary.run_key
    spend = (f"this attempt spent ${attempt:,.6f}; the run has spent "
             f"${summary.cost_usd:,.6f} in all")
    create_table_artifact(summary.cost_rows(), key=artifact_key(summary.task, LANE, "cost"),
                          description=f"Cost of {label} (run {summary.run_key}): {spend}")
    create_markdown_artifact(summary.markdown(),
                             key=artifact_key(summary.task, LANE, "summary"),
                             description=f"Summary of {label}: {summary.outcome_line()}")


class PrefectSteps:
    """The runner's steps, each executed as a Prefect task."""

    def __init__(self, task_name: str, spent_before_picodollars: int = 0) -> None:
        self.task_name = task_name
        self.spent_before = spent_before_picodollars

    def plan(self, run_key: str, input_url: str, window: DateWindow | None) -> int:
        return plan_run_task(self.task_name, run_key, input_url,
                             window.start if window else None, window.end if window else None)

    def next_shards(self, run_id: int, run_key: str) -> list[int]:
        return next_shards_task(self.task_name, run_id, run_key)

    def submit(self, shard_id: int) -> None:
        submit_shard_task(self.task_name, shard_id)

    def await_any(self, shard_ids: list[int]) -> list[int]:
        return await_any_task(self.task_name, shard_ids)

    def collect(self, shard_id: int) -> str:
        return collect_shard_task(self.task_name, shard_id)

    def finish(self, run_id: int) -> RunSummary:
        return finish_run_task(self.task_name, run_id, self.spent_before)


def run_cost_picodollars(ctx: LaneContext, run_key: str) -> int:
    """What the run has cost so far (0 for a run not yet in the ledger)."""
    run = ctx.ledger.run_by_key(run_key)
    return ctx.ledger.totals(run["id"])["cost_picodollars"] if run is not None else 0


def run_in_prefect(task_name: str, run_key: str, input_url: str,
                   window: DateWindow | None) -> RunSummary:
    """Drive one run from inside a flow: Prefect tasks for steps, logs to the flow run,
    a progress artifact; the summary says what this attempt spent."""
    ctx = context_for(task_name)
    ctx.log = RunLog()
    label = run_key if window is None else f"{task_name} {window.start}" \
        if window.start == window.end else f"{task_name} {window.start}..{window.end}"
    ctx.progress = PrefectProgress(run_key, artifact_key(task_name, LANE, "progress"), label)
    spent_before = plan_ahead.spent_before(run_key)
    if spent_before is None:
        spent_before = run_cost_picodollars(ctx, run_key)
    return run_batch_lane(ctx, run_key, input_url, window,
                          PrefectSteps(task_name, spent_before))
