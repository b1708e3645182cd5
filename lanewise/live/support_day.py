"""The support team's day as one runnable example flow (`support-day`): each incoming
ticket gets a reply draft on the live lane now, while the same conversations are
enqueued for the night's tagging and summary, which `drain-queue` answers in the batch
lane at half price. flows/support_day.py only wires this.

Why both: the agent waits for the draft (seconds, live prices); nobody waits for the
tags and the summary (tomorrow morning is fine, batch prices). The queue is idempotent
by task and ticket id, so a rerun of the same tickets queues nothing twice, and the
drain's crash rules (lanewise/batch/drain.py) carry them to exactly one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from lanewise.batch.flow_params import _blank_is_none, _config, parse
from lanewise.errors import LanewiseError
from lanewise.live.flow import (
    DEFAULT_CONCURRENCY,
    MAX_ROWS,
    LiveRunSummary,
    answer_rows,
    rows_from_input,
)

if TYPE_CHECKING:
    from prefect.states import State

REPLY_TASK = "reply-draft"
NIGHT_TASKS = ("ticket-tagging", "ticket-summary")


class SupportDayParams(BaseModel):
    """Incoming tickets: a reply draft for each now, tagging and summary tonight."""

    model_config = _config("Support day")

    rows: list[dict[str, Any]] | None = Field(
        default=None, title="Tickets", max_length=MAX_ROWS,
        description="The incoming tickets as JSON objects (ticket_id, subject, body, ...). "
        "Or leave empty and give an input and ticket ids.")
    input_url: str | None = Field(
        default=None, title="Input",
        description="A file to take the tickets from (Parquet, CSV or JSONL; a path on the "
        "worker or an s3:// URL), with the ticket ids below picking them.")
    keys: list[str] | None = Field(
        default=None, title="Ticket ids", max_length=MAX_ROWS,
        description="With an input: the ids of the tickets that came in.")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=64, title="Concurrency",
        description="Most reply drafts in flight at once.")

    _blank = field_validator("input_url", "rows", "keys", mode="before")(_blank_is_none)

    @model_validator(mode="after")
    def _rows_or_input(self) -> SupportDayParams:
        if (self.rows is None) == (self.input_url is None):
            raise ValueError("give either tickets, or an input with ticket ids")
        if self.input_url is not None and not self.keys:
            raise ValueError("an input needs the ids of the tickets that came in")
        if self.rows is not None and not self.rows:
            raise ValueError("tickets is empty: nothing came in")
        return self


@dataclass(frozen=True)
class SupportDay:
    """What the day did: the live drafts, and the queue items for the night by task."""

    drafts: LiveRunSummary
    queued: dict[str, list[int]]  # task -> queue item ids, in ticket order
    newly_queued: int

    def line(self) -> str:
        """The outcome in one line."""
        night = ", ".join(f"{len(ids)} for {task}" for task, ids in self.queued.items())
        return (f"support day: {self.drafts.line()}; queued for tonight: {night} "
                f"({self.newly_queued} new)")

    def queue_rows(self) -> list[dict[str, Any]]:
        """A table artifact's rows: each ticket's draft and its night requests."""
        return [{"ticket": outcome.key, "draft": outcome.status,
                 "answered by": outcome.answered_by,
                 "latency ms": "" if outcome.latency_ms is None else f"{outcome.latency_ms:.0f}",
                 "cost USD": f"{outcome.cost_usd:.6f}",
                 **{f"{task} request": ids[i] for task, ids in self.queued.items()}}
                for i, outcome in enumerate(self.drafts.outcomes)]


def support_day(rows: list[dict[str, Any]], concurrency: int = DEFAULT_CONCURRENCY,
                context: dict[str, Any] | None = None) -> SupportDay:
    """Draft a reply to each ticket live, and enqueue it for the night's tasks."""
    from lanewise import queue
    from lanewise.live import get_lane

    lane = get_lane()
    drafts = answer_rows(lane, REPLY_TASK, rows, concurrency, context)
    queued: dict[str, list[int]] = {}
    new = 0
    for task in NIGHT_TASKS:
        key_column = lane.catalog.get(task).input.key
        ids = []
        for row in rows:
            item, added = queue.put(lane.ledger, task, row.get(key_column), row,
                                    catalog=lane.catalog)
            ids.append(item.id)
            new += added
        queued[task] = ids
    return SupportDay(drafts, queued, new)


def run_support_day(raw: Any) -> State:
    """One support-day flow run, from its parameters to its final state."""
    from prefect.artifacts import create_table_artifact
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run
    from prefect.states import Completed, Failed

    from lanewise.batch.progress import artifact_key

    logger = get_run_logger()
    try:
        params = parse(SupportDayParams, raw)
        rows = params.rows if params.rows is not None else rows_from_input(
            REPLY_TASK, params.input_url or "", params.keys or [])
        day = support_day(rows, params.concurrency,
                          {"source": "support-day", "flow_run_id": str(flow_run.id)})
    except LanewiseError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    line = day.line()
    create_table_artifact(day.queue_rows(), key=artifact_key("support-day", "live", "tickets"),
                          description=line)
    logger.info("%s", line)
    brief = {"drafts": day.drafts.brief(), "queued": day.queued, "new": day.newly_queued}
    return Completed(message=line, data=brief)
