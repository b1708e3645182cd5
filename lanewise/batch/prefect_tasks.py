"""The batch lane's steps as Prefect tasks: one task per shard step, never per request.

Tasks take plain ids (not contexts) so Prefect can record their parameters; each
builds its lane context from the settings once per process.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lanewise.batch.context import DateWindow, LaneContext
from lanewise.batch.planning import open_run
from lanewise.batch.progress import PrefectProgress, artifact_key
from lanewise.batch.results import RunSummary
from lanewise.batch.runner import finish_run, next_shards, run_batch_lane
from lanewise.batch.steps import await_any, collect_shard, submit_shard
from lanewise.errors import QuotaExhaustedError, TransientProviderError

RETRY_DELAYS = [5, 30, 120]


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


@lru_cache(maxsize=16)
def context_for(task_name: str) -> LaneContext:
    """The lane context of a task, built once per process."""
    return LaneContext.build(task_name)


step = task(cache_policy=NO_CACHE, retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
            retry_condition_fn=_transient)


@step(name="plan-run")
def plan_run_task(task_name: str, run_key: str, input_url: str, start: date | None,
                  end: date | None) -> int:
    """Open or resume the run; plan its shards."""
    window = DateWindow(start, end) if start and end else None
    return open_run(context_for(task_name), run_key, input_url, window)


@step(name="next-shards")
def next_shards_task(task_name: str, run_id: int, run_key: str) -> list[int]:
    """Plan retry shards and list the shards still to do."""
    return next_shards(context_for(task_name), run_id, run_key)


@step(name="submit-shard", task_run_name="submit-shard-{shard_id}")
def submit_shard_task(task_name: str, shard_id: int) -> None:
    """Create the shard's provider batch unless it exists."""
    submit_shard(context_for(task_name), shard_id)


@step(name="await-batches")
def await_any_task(task_name: str, shard_ids: list[int]) -> list[int]:
    """Poll the in-flight batches until at least one ends; returns those shards."""
    return await_any(context_for(task_name), shard_ids)


@step(name="collect-shard", task_run_name="collect-shard-{shard_id}")
def collect_shard_task(task_name: str, shard_id: int) -> str:
    """Record the shard's results in the ledger; returns its status after."""
    return collect_shard(context_for(task_name), shard_id)


@step(name="finish-run")
def finish_run_task(task_name: str, run_id: int) -> RunSummary:
    """Write the results file and publish the cost artifacts."""
    summary = finish_run(context_for(task_name), run_id)
    create_table_artifact(summary.cost_rows(), key=artifact_key("cost", summary.run_key),
                          description=f"Cost of run {summary.run_key}")
    create_markdown_artifact(summary.markdown(), key=artifact_key("summary", summary.run_key),
                             description=f"Summary of run {summary.run_key}")
    return summary


class PrefectSteps:
    """The runner's steps, each executed as a Prefect task."""

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name

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
        return finish_run_task(self.task_name, run_id)


def run_in_prefect(task_name: str, run_key: str, input_url: str,
                   window: DateWindow | None) -> RunSummary:
    """Drive one run from inside a flow: Prefect tasks for steps, a progress artifact."""
    ctx = context_for(task_name)
    ctx.progress = PrefectProgress(run_key)
    return run_batch_lane(ctx, run_key, input_url, window, PrefectSteps(task_name))
