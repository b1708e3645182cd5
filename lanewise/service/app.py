"""The FastAPI app of `lanewise serve`: built once per process by `create_app`.

The app holds ONE live lane (`lanewise.live.LiveLane`): the catalog, price table,
ledger engine, rate limiter and SDK clients are built when the app is built, the async
clients when it starts serving (in its event loop), so a request only renders, calls
and records. The bearer token is read when the app is built too: without one it is
not built at all (auth.py says how to set one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lanewise import __version__
from lanewise.errors import LanewiseError, LedgerError
from lanewise.live import LiveLane
from lanewise.service import routes
from lanewise.service.auth import service_token
from lanewise.settings import Settings, get_settings

DESCRIPTION = """\
lanewise's live lane and deferred-work queue over HTTP, for applications in any language.

* `POST /v1/tasks/{task}/call` answers one row now (retries, latency budget and fallbacks
  as the task's catalog entry says) and records its cost in the ledger.
* `POST /v1/tasks/{task}/enqueue` queues one row for the next drain (batch prices),
  idempotent by task and key.
* `GET /v1/requests/{id}` reads a queued request (or a deferred call) and, once done, its
  result.

Every route but `/health` needs `Authorization: Bearer <LANEWISE_SERVICE_TOKEN>`.
"""


def providers_of(lane: LiveLane) -> set[str]:
    """Every provider the lane's tasks may call, fallback models included."""
    found: set[str] = set()
    for spec in lane.catalog.tasks.values():
        found.add(spec.provider)
        found.update(f.provider for f in spec.live.fallbacks if f.kind == "model" and f.provider)
    return found


def create_app(settings: Settings | None = None, *, lane: LiveLane | None = None) -> FastAPI:
    """The service's app over `lane` (default: a lane built here for `settings`, closed
    when the app shuts down). Raises ConfigurationError when no token is configured."""
    settings = settings or get_settings()
    token = service_token(settings)
    own_lane = lane is None
    lane = lane or LiveLane(settings)
    try:
        lane.warm()  # every task's sync clients and prices, before the first request
    except BaseException:
        if own_lane:
            lane.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # This loop's async clients, built now rather than by the first request.
        adapters = [lane.async_adapter(p) for p in sorted(providers_of(lane))]
        try:
            yield
        finally:
            for adapter in adapters:
                client = getattr(adapter, "async_client", None)
                if client is not None:
                    await client.close()
            if own_lane:
                await asyncio.to_thread(lane.close)

    app = FastAPI(title="lanewise", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.lane = lane
    app.state.token_bytes = token.encode("utf-8")
    app.include_router(routes.health_router)
    app.include_router(routes.router)
    app.add_exception_handler(routes.TaskNotFound, _task_not_found)
    app.add_exception_handler(routes.RequestNotFound, _request_not_found)
    app.add_exception_handler(LanewiseError, _lanewise_error)
    return app


async def _task_not_found(request: Request, exc: Any) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "known_tasks": exc.known}, status_code=404)


async def _request_not_found(request: Request, exc: Any) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _lanewise_error(request: Request, exc: Any) -> JSONResponse:
    # lanewise's errors never hold secrets (errors.py); one line, no traceback.
    code = 503 if isinstance(exc, LedgerError) else 500
    return JSONResponse({"detail": str(exc)}, status_code=code)
