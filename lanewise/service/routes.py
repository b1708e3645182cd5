"""The service's routes: call a task live, enqueue deferred work, read a request, list
the tasks, health. Every route but /health needs the bearer token (auth.py).

Input is checked before anything is paid: the body by its pydantic model, then the row
against the task (every column its prompt uses present, its required columns non-empty,
as the batch lane's request code says), each problem a 422 in FastAPI's own shape whose
`loc` names the field (`["body", "row", "body"]`). A task not in the catalog is a 404
naming the known tasks.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError

from lanewise import queue
from lanewise.catalog import TaskSpec
from lanewise.errors import InputError
from lanewise.service.auth import require_token
from lanewise.service.models import (
    CallRequest,
    CallResult,
    EnqueueRequest,
    EnqueueResult,
    ErrorBody,
    Health,
    QueuedRequest,
    TaskInfo,
    UnknownTask,
)

if TYPE_CHECKING:
    from lanewise.live import LiveLane

HEALTH_TIMEOUT_SECONDS = 2.0
UNAUTHORIZED = {401: {
    "model": ErrorBody, "description": "No bearer token, or a wrong one.",
    "headers": {"WWW-Authenticate": {"description": "Always `Bearer`.",
                                     "schema": {"type": "string"}}}}}
NO_TASK = {404: {"model": UnknownTask, "description": "The task is not in the catalog; "
                 "`known_tasks` lists those that are."}}
# FastAPI's own validation error body (its components always hold it once a route
# takes a body), described for these routes.
BAD_INPUT = {422: {"description": "Bad input: each error's `loc` names the field (e.g. "
                   "[\"body\", \"row\", \"body\"] for the row's `body` column).",
                   "content": {"application/json": {"schema": {
                       "$ref": "#/components/schemas/HTTPValidationError"}}}}}

TaskName = Annotated[str, Path(description="A task of the catalog (GET /v1/tasks lists "
                                           "them), e.g. `reply-draft`.")]

health_router = APIRouter(tags=["health"])
router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)],
                   responses={**UNAUTHORIZED})


class TaskNotFound(Exception):
    """A path named a task the catalog does not have (a 404 naming the known ones)."""

    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__(f"no task {task!r} in the catalog (known: {', '.join(known)})")
        self.known = known


def _lane(request: Request) -> LiveLane:
    return request.app.state.lane


async def known_task(task: TaskName, request: Request) -> TaskSpec:
    """The path's task from the catalog, else a 404 naming the known ones (a dependency,
    so it is answered before the body is validated)."""
    tasks = _lane(request).catalog.tasks
    spec = tasks.get(task)
    if spec is None:
        raise TaskNotFound(task, sorted(tasks))
    return spec


KnownTask = Annotated[TaskSpec, Depends(known_task)]


def _row_error(field: str | None, message: str, kind: str = "value_error") -> dict[str, Any]:
    loc = ["body", "row"] if field in (None, "row") else ["body", "row", field]
    return {"type": kind, "loc": loc, "msg": message, "input": None}


def check_row(spec: TaskSpec, row: dict[str, Any], *, key_given: bool) -> None:
    """Refuse (422) a row lacking a column the task's prompt uses, its key column (unless
    the key is given apart) or a required column: every missing column is named."""
    needed = set(spec.prompt.columns()) | set(spec.input.required)
    if not key_given:
        needed.add(spec.input.key)
    missing = sorted(column for column in needed if column not in row)
    if missing:
        raise RequestValidationError([
            _row_error(column, f"Field required: task {spec.name!r} uses column {column!r}",
                       "missing") for column in missing])


def invalid_row(exc: InputError) -> RequestValidationError:
    """An InputError about the row (it names the field) as a 422."""
    return RequestValidationError([_row_error(exc.field, exc.reason)])


def _request_url(request: Request, item_id: int) -> str:
    return str(request.app.url_path_for("read_request", request_id=str(item_id)))


def _queued(request: Request, item: queue.QueueItem) -> dict[str, Any]:
    return {**item.record(), "done": item.done, "request_url": _request_url(request, item.id)}


@health_router.get("/health", response_model=Health, summary="Health (no token needed)",
                   responses={503: {"model": Health, "description": "The ledger cannot be "
                                    "read."}})
async def health(request: Request, response: Response) -> Health:
    """Whether the service can answer: its ledger reads within 2 seconds."""
    lane = _lane(request)

    def ping() -> None:
        with lane.ledger.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    try:
        await asyncio.wait_for(asyncio.to_thread(ping), HEALTH_TIMEOUT_SECONDS)
        ledger = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, by kind only (no URL, no secret)
        ledger = f"unavailable ({type(exc).__name__})"
    if ledger != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ledger == "ok" else "unavailable", ledger=ledger,
                  tasks=len(lane.catalog.tasks))


@router.get("/tasks", response_model=list[TaskInfo], tags=["catalog"],
            summary="The catalog's tasks")
async def list_tasks(request: Request) -> list[TaskInfo]:
    """Every task of the catalog, with the columns a row needs and the output it gives."""
    return [TaskInfo(name=s.name, description=s.description, lane=s.lane.value,
                     provider=s.provider, model=s.model, key_column=s.input.key,
                     columns=sorted(s.prompt.columns()), required=list(s.input.required),
                     output_type=s.output.type, output_schema=s.output.json_schema)
            for s in sorted(_lane(request).catalog.tasks.values(), key=lambda s: s.name)]


@router.post(
    "/tasks/{task}/call", response_model=CallResult, tags=["live"],
    summary="Answer one row of a task now (the live lane)",
    responses={**NO_TASK, **BAD_INPUT,
               202: {"model": CallResult, "description": "Deferred (status processing): "
                     "the `Location` header and `request_url` say where to read it."},
               502: {"model": CallResult, "description": "Nothing answered within the "
                     "task's latency budget and fallbacks (status failed; `error` says "
                     "why)."}})
async def call_task(spec: KnownTask, body: CallRequest, request: Request,
                    response: Response) -> CallResult:
    """Render the task's prompt from the row, call its model (with the task's retries,
    latency budget and fallbacks), check the answer against its schema, record usage and
    cost in the ledger, and return what happened."""
    lane = _lane(request)
    check_row(spec, body.row, key_given=False)
    try:
        result = await lane.acall(spec.name, body.row, context=body.context)
    except InputError as exc:
        raise invalid_row(exc) from None
    url = None
    if result.status == "processing" and result.queue_item_id is not None:
        url = _request_url(request, result.queue_item_id)
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Location"] = url
    elif result.status == "failed":
        response.status_code = status.HTTP_502_BAD_GATEWAY
    return CallResult(status=result.status, output=result.output, text=result.text,
                      answered_by=result.answered_by, provider=result.provider,
                      model=result.model, cost_usd=result.cost_usd,
                      latency_ms=result.latency_ms, attempts=result.attempts,
                      fallback_reason=result.fallback_reason, error=result.error,
                      call_id=result.call_id, queue_item_id=result.queue_item_id,
                      request_url=url, cached_from=result.cached_from)


@router.post(
    "/tasks/{task}/enqueue", response_model=EnqueueResult, tags=["queue"],
    status_code=status.HTTP_201_CREATED,
    summary="Queue one row of a task for the next drain (batch prices)",
    responses={**NO_TASK, **BAD_INPUT,
               200: {"model": EnqueueResult, "description": "The task and key were queued "
                     "before: that request, unchanged."}})
async def enqueue_task(spec: KnownTask, body: EnqueueRequest, request: Request,
                       response: Response) -> EnqueueResult:
    """Store the row in the deferred-work queue under its key, idempotent by task and key;
    the next drain answers it in the batch lane. Read it at GET /v1/requests/{id}."""
    lane = _lane(request)
    check_row(spec, body.row, key_given=body.key is not None)
    key = body.key if body.key is not None else body.row.get(spec.input.key)
    try:
        item, added = await asyncio.to_thread(queue.put, lane.ledger, spec.name, key,
                                              body.row, catalog=lane.catalog)
    except InputError as exc:
        raise invalid_row(exc) from None
    if not added:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = _request_url(request, item.id)
    return EnqueueResult(**_queued(request, item), created=added)


@router.get(
    "/requests/{request_id}", response_model=QueuedRequest, tags=["queue"],
    name="read_request", summary="A deferred request's status and result",
    responses={404: {"model": ErrorBody, "description": "No request has this id."}})
async def read_request(
        request_id: Annotated[int, Path(gt=0, description="The id from enqueue, or the "
                                        "`queue_item_id` of a deferred live call.")],
        request: Request) -> QueuedRequest:
    """The request's status and, once it is done, its result (a deferred live call's
    `queue_item_id` is such a request)."""
    lane = _lane(request)
    item = await asyncio.to_thread(queue.result, lane.ledger, request_id,
                                   catalog=lane.catalog)
    if item is None:
        raise RequestNotFound(request_id)
    return QueuedRequest(**_queued(request, item))


class RequestNotFound(Exception):
    """No queue item has the id asked for."""

    def __init__(self, request_id: int) -> None:
        super().__init__(f"no request {request_id} (ids come from enqueue, or from a "
                         "deferred call's queue_item_id)")
