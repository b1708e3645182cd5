"""The emulator's FastAPI app: both providers' surfaces plus a control surface."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError, model_validator

from lanewise.emulator import anthropic_routes, cost_reports, openai_routes
from lanewise.emulator.config import Faults, RateLimits, Timing
from lanewise.emulator.http_errors import auth_failure
from lanewise.emulator.state import EmulatorState, ScriptedFault

CONTROL_PREFIX = "/_emulator"


class ScriptedFaultIn(BaseModel):
    """Body of POST /_emulator/faults/next: a `status`, or a `kind` of fault."""

    status: int | None = None
    count: int = 1
    provider: Literal["openai", "anthropic"] | None = None
    retry_after: float | None = None
    kind: Literal["insufficient_quota"] | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _status_or_kind(self) -> ScriptedFaultIn:
        if self.status is None and self.kind is None:
            raise ValueError("give a status or a kind")
        return self


def create_app(state: EmulatorState) -> FastAPI:
    """The emulator app bound to `state`."""
    app = FastAPI(title="lanewise provider emulator", docs_url=f"{CONTROL_PREFIX}/docs",
                  openapi_url=f"{CONTROL_PREFIX}/openapi.json", redoc_url=None)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        state.touch()
        if request.url.path.startswith("/v1/"):
            failure = auth_failure(request, state.config.api_key)
            if failure is not None:
                return failure
        return await call_next(request)

    app.include_router(openai_routes.build_router(state))
    app.include_router(anthropic_routes.build_router(state))
    app.include_router(cost_reports.build_router(state))

    @app.get(f"{CONTROL_PREFIX}/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "state_dir": str(state.state_dir.resolve()),
                **state.snapshot()}

    @app.get(f"{CONTROL_PREFIX}/faults")
    def get_faults() -> dict[str, Any]:
        return state.config.faults.model_dump()

    @app.patch(f"{CONTROL_PREFIX}/faults")
    async def patch_faults(request: Request) -> Any:
        try:
            merged = {**state.config.faults.model_dump(), **(await request.json())}
            state.set_faults(Faults.model_validate(merged))
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return state.config.faults.model_dump()

    @app.post(f"{CONTROL_PREFIX}/faults/next")
    def script_fault(fault: ScriptedFaultIn) -> dict[str, Any]:
        with state.lock:
            state.scripted.append(ScriptedFault(**fault.model_dump()))
        return {"scripted": [vars(s) for s in state.scripted]}

    @app.get(f"{CONTROL_PREFIX}/timing")
    def get_timing() -> dict[str, Any]:
        return state.config.timing.model_dump()

    @app.patch(f"{CONTROL_PREFIX}/timing")
    async def patch_timing(request: Request) -> Any:
        try:
            merged = {**state.config.timing.model_dump(), **(await request.json())}
            state.config.timing = Timing.model_validate(merged)
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return state.config.timing.model_dump()

    @app.get(f"{CONTROL_PREFIX}/rate-limits")
    def get_rate_limits() -> dict[str, Any]:
        return state.config.rate_limits.model_dump()

    @app.patch(f"{CONTROL_PREFIX}/rate-limits")
    async def patch_rate_limits(request: Request) -> Any:
        # What was counted stays counted: a new budget applies to the usage so far.
        try:
            merged = {**state.config.rate_limits.model_dump(), **(await request.json())}
            state.set_rate_limits(RateLimits.model_validate(merged), reset_usage=False)
        except (ValueError, TypeError, ValidationError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return state.config.rate_limits.model_dump()

    @app.get(f"{CONTROL_PREFIX}/rate-limits/usage")
    def rate_limit_usage() -> dict[str, Any]:
        return {"data": state.rate_limiter.usage()}

    @app.delete(f"{CONTROL_PREFIX}/rate-limits/usage")
    def forget_rate_limit_usage() -> dict[str, Any]:
        state.rate_limiter.reset()
        return {"cleared": True}

    @app.get(f"{CONTROL_PREFIX}/billing")
    def billing(provider: str | None = None, lane: str | None = None,
                batch_id: str | None = None, model: str | None = None,
                since: float | None = None, until: float | None = None) -> dict[str, Any]:
        return state.billing.summary(provider=provider, lane=lane, batch_id=batch_id,
                                     model=model, since=since, until=until)

    @app.get(f"{CONTROL_PREFIX}/billing/records")
    def billing_records(provider: str | None = None, lane: str | None = None,
                        batch_id: str | None = None, model: str | None = None,
                        since: float | None = None, until: float | None = None) -> Any:
        rows = state.billing.records(provider=provider, lane=lane, batch_id=batch_id,
                                     model=model, since=since, until=until)
        lines = (json.dumps(row) + "\n" for row in rows)
        return StreamingResponse(lines, media_type="application/x-jsonl")

    @app.get(f"{CONTROL_PREFIX}/billing/by-day")
    def billing_by_day(provider: str | None = None, since_day: str | None = None,
                       until_day: str | None = None) -> dict[str, Any]:
        return {"data": state.billing.by_day(provider=provider, since_day=since_day,
                                             until_day=until_day)}

    @app.delete(f"{CONTROL_PREFIX}/billing")
    def clear_billing() -> dict[str, Any]:
        state.billing.clear()
        return {"cleared": True}

    return app
