"""The `live-on-demand` flow's logic: a handful of rows of one task answered now, in the
live lane, shown in the Prefect UI (flows/live.py only wires this).

For jobs someone waits for but that are not one request ("draft replies for these 20
tickets now"): the rows come in the parameters, or from an input file picked by their
keys; each is one plain live call (`LiveLane.call`: retries, latency budget, fallbacks,
cost recorded in the ledger's `live_calls`), at most `concurrency` at once through a
thread pool, with no sharding and no Prefect task per row. The run publishes a cost
table under a stable key (`<task>-live-cost`) and a per-row table
(`<task>-live-results`), and ends with its outcome in one line (rows, succeeded,
failed, cost, latency p50/p95). Every row ends in exactly one outcome: a row the lane
refuses (a bad field) or that fails is counted failed with its reason, never dropped.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.json_schema import WithJsonSchema

from lanewise.batch.flow_params import _blank_is_none, _config, parse
from lanewise.catalog import LanePolicy, load_catalog
from lanewise.errors import ConfigurationError, InputError, LanewiseError

if TYPE_CHECKING:
    from prefect.states import State

    from lanewise.live.lane import LiveLane

LANE = "live"
MAX_ROWS = 500  # more than this is a job for the batch lane (or the queue), not "now"
DEFAULT_CONCURRENCY = 8


def live_task_names() -> list[str]:
    """The catalog's tasks that run in the live lane (lane live or auto), sorted."""
    catalog = load_catalog()
    return sorted(name for name, spec in catalog.tasks.items() if spec.lane != LanePolicy.BATCH)


# Built from the catalog when this module is imported (by flows/live.py): a live task
# added to data/catalog.yaml is a choice in the UI's form after the next deploy.
LiveTask = Enum("LiveTask", {name: name for name in live_task_names()}, type=str)
LiveTaskField = Annotated[LiveTask, WithJsonSchema(
    {"type": "string", "enum": [t.value for t in LiveTask]})]


class LiveParams(BaseModel):
    """A few rows of one task answered now in the live lane."""

    model_config = _config("Live on-demand run")

    task: LiveTaskField = Field(title="Task", description="The catalog task to answer live.")
    rows: list[dict[str, Any]] | None = Field(
        default=None, title="Rows", max_length=MAX_ROWS,
        description="The rows to answer, as JSON objects with the columns the task's prompt "
        "uses and its key column (e.g. [{\"ticket_id\": \"T-1\", \"body\": \"...\"}]). Or "
        "leave empty and give an input and keys.")
    input_url: str | None = Field(
        default=None, title="Input",
        description="A file to take the rows from (Parquet, CSV or JSONL; a path on the "
        "worker or an s3:// URL), with the keys below picking them.")
    keys: list[str] | None = Field(
        default=None, title="Keys (ticket ids)", max_length=MAX_ROWS,
        description="With an input: the keys (the task's key column, e.g. ticket ids) of "
        "the rows to answer, in this order.")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=64, title="Concurrency",
        description="Most live calls in flight at once (the provider's own live limits "
        "apply on top).")

    _blank = field_validator("input_url", "rows", "keys", mode="before")(_blank_is_none)

    @model_validator(mode="after")
    def _rows_or_input(self) -> LiveParams:
        if (self.rows is None) == (self.input_url is None):
            raise ValueError("give either rows, or an input with keys")
        if self.input_url is not None and not self.keys:
            raise ValueError("an input needs the keys of the rows to answer")
        if self.input_url is None and self.keys:
            raise ValueError("keys pick rows from an input: give the input too")
        if self.rows is not None and not self.rows:
            raise ValueError("rows is empty: nothing to answer")
        return self

    def count(self) -> int:
        """How many rows the run answers."""
        return len(self.rows) if self.rows is not None else len(self.keys or [])


@dataclass(frozen=True)
class RowOutcome:
    """What one row came to (from its LiveResult, or why the lane refused it)."""

    key: str
    status: str  # succeeded | invalid_output | failed | processing
    answered_by: str
    latency_ms: float | None
    cost_usd: Decimal
    attempts: int
    call_id: int | None
    queue_item_id: int | None
    error: str | None
    output: Any = None


@dataclass(frozen=True)
class LiveRunSummary:
    """A live on-demand run in numbers."""

    task: str
    outcomes: list[RowOutcome]

    @property
    def counts(self) -> dict[str, int]:
        """Rows by status."""
        return dict(Counter(o.status for o in self.outcomes))

    @property
    def cost_usd(self) -> Decimal:
        """What the run's calls cost at live prices."""
        return sum((o.cost_usd for o in self.outcomes), Decimal(0))

    def latency(self, percentile: float) -> float | None:
        """The calls' latency at this percentile (nearest rank), ms; None without calls."""
        values = sorted(o.latency_ms for o in self.outcomes if o.latency_ms is not None)
        if not values:
            return None
        return values[max(math.ceil(percentile / 100 * len(values)) - 1, 0)]

    def line(self) -> str:
        """The outcome in one line: rows, succeeded, failed, cost, latency p50/p95."""
        counts = self.counts
        rows = len(self.outcomes)
        extra = "".join(f", {counts[s]} {label}" for s, label in (
            ("invalid_output", "invalid output"), ("processing", "deferred")) if counts.get(s))
        p50, p95 = self.latency(50), self.latency(95)
        latency = (f"latency p50 {p50:,.0f} ms, p95 {p95:,.0f} ms" if p50 is not None
                   else "no call made")
        return (f"{self.task} live: {rows} row{'s' if rows != 1 else ''}, "
                f"{counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} failed"
                f"{extra}, cost ${self.cost_usd:,.6f}, {latency}")

    def cost_rows(self) -> list[dict[str, Any]]:
        """The cost table artifact's rows."""
        answered = Counter(o.answered_by for o in self.outcomes)
        p50, p95 = self.latency(50), self.latency(95)
        return [
            {"metric": "rows", "value": len(self.outcomes)},
            *({"metric": status, "value": n} for status, n in sorted(self.counts.items())),
            *({"metric": f"answered by {by}", "value": n} for by, n in sorted(answered.items())),
            {"metric": "cost USD (live prices)", "value": f"{self.cost_usd:.6f}"},
            {"metric": "provider calls", "value": sum(o.attempts for o in self.outcomes)},
            {"metric": "latency p50 ms", "value": "" if p50 is None else f"{p50:.1f}"},
            {"metric": "latency p95 ms", "value": "" if p95 is None else f"{p95:.1f}"},
        ]

    def result_rows(self) -> list[dict[str, Any]]:
        """The per-row table artifact's rows (no answers: those stay in the ledger)."""
        return [{"key": o.key, "status": o.status, "answered by": o.answered_by,
                 "latency ms": "" if o.latency_ms is None else f"{o.latency_ms:.1f}",
                 "cost USD": f"{o.cost_usd:.6f}", "attempts": o.attempts,
                 "live call id": o.call_id or "", "request id": o.queue_item_id or "",
                 "error": o.error or ""} for o in self.outcomes]

    def brief(self) -> dict[str, Any]:
        """The run as JSON-ready data (the flow's result), answers included."""
        return {"task": self.task, "rows": len(self.outcomes), "counts": self.counts,
                "cost_usd": str(self.cost_usd), "latency_p50_ms": self.latency(50),
                "latency_p95_ms": self.latency(95), "outcome": self.line(),
                "results": [{**asdict(o), "cost_usd": str(o.cost_usd)}
                            for o in self.outcomes]}


def rows_from_input(task: str, input_url: str, keys: list[str]) -> list[dict[str, Any]]:
    """The rows of `input_url` whose key is in `keys`, in the order of `keys` (the file
    is streamed, and read only until every key is found); a ConfigurationError naming
    the keys it lacks."""
    from lanewise.inputs import read_rows

    spec = load_catalog().get(task)
    column = spec.input.key
    wanted = dict.fromkeys(str(k).strip() for k in keys)
    found: dict[str, dict[str, Any]] = {}
    for row in read_rows(input_url, required=[column]):
        key = str(row.values.get(column) or "").strip()
        if key in wanted and key not in found:
            found[key] = row.values
            if len(found) == len(wanted):
                break
    missing = [k for k in wanted if k not in found]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        raise ConfigurationError(f"{len(missing)} key(s) not in {input_url} (column "
                                 f"{column}): {shown}; nothing was called")
    return [found[k] for k in wanted]


def answer_rows(lane: LiveLane, task: str, rows: list[dict[str, Any]], concurrency: int,
                context: dict[str, Any] | None = None) -> LiveRunSummary:
    """Each row answered by one live call, at most `concurrency` at once."""
    key_column = lane.catalog.get(task).input.key

    def one(row: dict[str, Any]) -> RowOutcome:
        key = str(row.get(key_column, "") if isinstance(row, dict) else "")
        started = time.monotonic()
        try:
            result = lane.call(task, row, context=context)
        except InputError as exc:
            return _refused(key, str(exc), None)
        except LanewiseError as exc:
            return _refused(key, str(exc), (time.monotonic() - started) * 1000)
        return RowOutcome(key=key, status=result.status, answered_by=result.answered_by,
                          latency_ms=result.latency_ms, cost_usd=result.cost_usd,
                          attempts=result.attempts, call_id=result.call_id,
                          queue_item_id=result.queue_item_id,
                          error=result.error or result.fallback_reason, output=result.output)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(rows))),
                            thread_name_prefix="live-on-demand") as pool:
        outcomes = list(pool.map(one, rows))
    return LiveRunSummary(task, outcomes)


def _refused(key: str, reason: str, latency_ms: float | None) -> RowOutcome:
    return RowOutcome(key=key, status="failed", answered_by="none", latency_ms=latency_ms,
                      cost_usd=Decimal(0), attempts=0, call_id=None, queue_item_id=None,
                      error=reason)


def live_run_name() -> str:
    """The flow run's name: the task and the row count (`reply-draft live 20 rows`)."""
    try:
        from prefect.runtime import flow_run

        raw = (flow_run.parameters or {}).get("params")
        raw = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})
        task = raw.get("task")
        task = str(getattr(task, "value", task) or "no task")
        count = len(raw.get("rows") or raw.get("keys") or [])
        return f"{task} live {count} row{'s' if count != 1 else ''}"
    except Exception:  # noqa: BLE001 - a name must never stop a run
        return "live-on-demand"


def run_live(raw: Any) -> State:
    """One live-on-demand flow run, from its parameters to its final state."""
    from prefect.artifacts import create_table_artifact
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run
    from prefect.states import Completed, Failed

    from lanewise.batch.progress import artifact_key
    from lanewise.live import get_lane

    logger = get_run_logger()
    try:
        params = parse(LiveParams, raw)
        task = params.task.value
        rows = params.rows if params.rows is not None else rows_from_input(
            task, params.input_url or "", params.keys or [])
    except LanewiseError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    lane = get_lane()
    context = {"source": "live-on-demand", "flow_run_id": str(flow_run.id),
               "flow_run": flow_run.name}
    summary = answer_rows(lane, task, rows, params.concurrency, context)
    line = summary.line()
    create_table_artifact(summary.cost_rows(), key=artifact_key(task, LANE, "cost"),
                          description=f"Cost of {task} answered live on demand: {line}")
    create_table_artifact(summary.result_rows(), key=artifact_key(task, LANE, "results"),
                          description=f"Each row of {task} answered live on demand (answers "
                          "in the ledger's live_calls, by live call id)")
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            logger.warning("%s %s failed: %s", task, outcome.key or "(no key)", outcome.error)
    if summary.counts.get("failed", 0) == len(summary.outcomes):
        logger.error("%s", line)
        return Failed(message=line, data=summary.brief())
    logger.info("%s", line)
    return Completed(message=line, data=summary.brief())
