"""The service's request and response bodies: what /openapi.json documents.

Request bodies refuse unknown fields, so a misspelt field is a 422 naming it rather
than silently ignored. Costs are exact decimals, sent as JSON strings ("0.000123").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Row = dict[str, Any]
ROW_DESCRIPTION = (
    "The input row: its columns as the task's prompt template uses them, plus the task's "
    "key column (e.g. {\"ticket_id\": \"T-1\", \"subject\": \"...\", \"body\": \"...\"}). "
    "Every column the task's prompt names must be present (null counts as present); the "
    "task's required columns must be non-empty.")


class CallRequest(BaseModel):
    """A live call: one row of a task, answered now."""

    model_config = ConfigDict(extra="forbid")

    row: Row = Field(description=ROW_DESCRIPTION)
    context: dict[str, Any] | None = Field(
        default=None, description="Anything JSON the caller wants recorded with the call in "
        "the ledger (e.g. {\"agent\": \"ana\", \"ticket\": \"T-1\"}); not sent to the model.")


class CallResult(BaseModel):
    """What a live call came to (lanewise.live.LiveResult)."""

    status: Literal["succeeded", "invalid_output", "failed", "processing"] = Field(
        description="succeeded; invalid_output (answered, but not as the task's schema "
        "says); failed (nothing answered: `error` says why; HTTP 502); processing (deferred "
        "to the queue: read it later at `request_url`; HTTP 202).")
    output: Any = Field(description="The parsed answer: JSON for a JSON task, the text for "
                        "a text task; null unless succeeded.")
    text: str | None = Field(description="The raw answer text.")
    answered_by: Literal["live", "fallback_model", "cache", "deferred", "none"] = Field(
        description="Which path answered: the task's own model (live), a fallback model, "
        "the result cache, the deferred queue, or none.")
    provider: str = Field(description="The provider that answered (the task's own for the "
                          "cache, deferred and none).")
    model: str = Field(description="The model that answered.")
    cost_usd: Decimal = Field(description="What the call cost at live prices, exact, as a "
                              "string (0 from the cache or deferred).")
    latency_ms: float = Field(description="How long the call took inside lanewise, in ms.")
    attempts: int = Field(description="Provider calls made, all models together.")
    fallback_reason: str | None = Field(description="Why a fallback answered, if one did.")
    error: str | None = Field(description="What went wrong, for invalid_output and failed.")
    call_id: int | None = Field(description="The call's row in the ledger's live_calls "
                                "(null while it sits in the local journal).")
    queue_item_id: int | None = Field(description="When deferred: the request id to read "
                                      "at GET /v1/requests/{id}.")
    request_url: str | None = Field(description="When deferred: where to read the result.")
    cached_from: str | None = Field(description="When answered from the cache: the original "
                                    "answer (live:<id> or item:<id>).")


class EnqueueRequest(BaseModel):
    """Deferred work: one row of a task, answered by the next drain at batch prices."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="The request's stable key (e.g. the ticket id), unique per task: "
        "enqueuing the same key again returns the existing request unchanged. Default: "
        "the row's key column (the task's `input.key`).")
    row: Row = Field(description=ROW_DESCRIPTION + " The key column may be left out when "
                     "`key` is given.")


class QueuedRequest(BaseModel):
    """A request in the deferred-work queue (lanewise.queue.QueueItem)."""

    id: int = Field(description="The request id (GET /v1/requests/{id}).")
    task: str = Field(description="The catalog task.")
    key: str = Field(description="The request's key, unique per task.")
    status: Literal["queued", "claimed", "succeeded", "invalid_output", "failed"] = Field(
        description="queued (waiting for the next drain); claimed (in a drain's batch run); "
        "succeeded | invalid_output | failed (final).")
    done: bool = Field(description="Whether the status is final.")
    output: Any = Field(description="Once succeeded: the parsed answer (JSON for a JSON "
                        "task, the text for a text task).")
    output_text: str | None = Field(description="The raw answer text, once answered.")
    error: str | None = Field(description="Why it failed, if it did.")
    cost_usd: Decimal = Field(description="What it cost at batch prices, exact, as a string.")
    run_key: str | None = Field(description="The drain run that carries or carried it.")
    created_at: str | None = Field(description="When it was enqueued (ISO 8601, UTC).")
    finished_at: str | None = Field(description="When it reached its final status.")
    request_url: str = Field(description="Where to read it again.")


class EnqueueResult(QueuedRequest):
    """An enqueued request, and whether this call added it."""

    created: bool = Field(description="True when this call queued it (HTTP 201); false when "
                          "the task and key were queued before (HTTP 200: unchanged).")


class TaskInfo(BaseModel):
    """One catalog task as a client needs it."""

    name: str
    description: str
    lane: str = Field(description="live | batch | auto.")
    provider: str
    model: str
    key_column: str = Field(description="The column holding each row's key.")
    columns: list[str] = Field(description="Every column the task's prompt uses.")
    required: list[str] = Field(description="Columns that must be non-empty.")
    output_type: Literal["text", "json"]
    output_schema: dict[str, Any] | None = Field(description="The JSON schema of the output "
                                                 "of a JSON task.")


class ErrorBody(BaseModel):
    """An error: what went wrong, in one line."""

    detail: str = Field(description="What went wrong.")


class UnknownTask(ErrorBody):
    """A task not in the catalog."""

    known_tasks: list[str] = Field(description="The catalog's tasks.")


class Health(BaseModel):
    """Whether the service can answer."""

    status: Literal["ok", "unavailable"]
    ledger: str = Field(description="ok, or why the ledger cannot be read.")
    tasks: int = Field(description="Tasks in the catalog.")
