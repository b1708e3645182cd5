"""The live endpoints' common path (OpenAI chat completions, Anthropic messages).

In order: the added latency, then a fault (no credit, scripted, or a seeded draw), then
the rate-limit budget of the caller's key for the model, then the answer, billed, with
the provider's rate-limit headers. Faults and latency are drawn before the budget is
looked at, so the same seed gives the same faults whatever the budgets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from lanewise.emulator import rate_limit_http
from lanewise.emulator.engine import InvalidRequest
from lanewise.emulator.http_errors import (
    FAULT_MESSAGES,
    anthropic_credit_error,
    anthropic_error,
    openai_error,
    openai_quota_error,
    presented_key,
)
from lanewise.emulator.rate_limits import NOTHING
from lanewise.emulator.state import INSUFFICIENT_QUOTA, EmulatorState, LiveFault
from lanewise.pricing import Lane


def _error(provider: str, status: int, message: str, *, headers: dict[str, str] | None = None,
           **details: Any) -> JSONResponse:
    if provider == "openai":
        return openai_error(status, message, headers=headers, param=details.get("param"),
                            code=details.get("code"))
    return anthropic_error(status, message, kind=details.get("kind"), headers=headers)


def _fault_response(state: EmulatorState, provider: str, key: str, model: str | None,
                    fault: LiveFault) -> JSONResponse:
    """The answer a faulted call gets; a 429 carries `retry-after` and the key's
    rate-limit headers as they stand."""
    if fault.kind == INSUFFICIENT_QUOTA:
        return openai_quota_error() if provider == "openai" else anthropic_credit_error()
    status = fault.status
    if provider == "openai" and status == 529:
        status = 503  # OpenAI has no 529; its overload answer is a 503
    message = FAULT_MESSAGES.get(status, f"Emulated error {status}.")
    headers: dict[str, str] = {}
    if status == 429:
        wait = (fault.retry_after if fault.retry_after is not None
                else state.config.faults.retry_after_seconds)
        headers = {"retry-after": f"{wait:g}"}
        if provider == "openai":
            headers["retry-after-ms"] = str(int(wait * 1000))
        if model is not None:
            now, gauges = state.rate_limiter.gauges(provider, key, model)
            headers = {**rate_limit_http.rate_headers(provider, now, gauges), **headers}
    return _error(provider, status, message, headers=headers,
                  code="rate_limit_exceeded" if status == 429 else None)


async def serve_live_call(state: EmulatorState, request: Request, provider: str) -> JSONResponse:
    """Answer one live call of `provider` ("openai" or "anthropic")."""
    state.stats[f"{provider}_live_calls"] += 1
    try:
        body: Any = await request.json()
    except ValueError:
        body = None
    model = body.get("model") if isinstance(body, dict) else None
    model = model if isinstance(model, str) else None
    key = presented_key(request) or ""
    await asyncio.sleep(state.live_latency(provider, model))
    fault = state.live_fault(provider, model)
    if fault is not None:
        return _fault_response(state, provider, key, model, fault)
    if not isinstance(body, dict):
        return _error(provider, 400, "The request body is not valid JSON.")
    limiter = state.rate_limiter
    charged = rate_limit_http.estimate(provider, body)
    verdict = limiter.admit(provider, key, model or "", charged)
    if not verdict.allowed:
        with state.lock:
            state.stats["rate_limited"] += 1
        now, gauges = limiter.gauges(provider, key, model or "")
        return rate_limit_http.refusal(provider, model or "", verdict,
                                       rate_limit_http.rate_headers(provider, now, gauges))
    try:
        answer = (state.engine.openai_chat(body, Lane.LIVE) if provider == "openai"
                  else state.engine.anthropic_message(body, Lane.LIVE))
    except InvalidRequest as error:
        limiter.adjust(provider, key, model or "", charged, NOTHING)
        return _error(provider, error.status, error.message, param=error.param,
                      code=error.code, kind=error.kind)
    used = rate_limit_http.actual(provider, answer)
    limiter.adjust(provider, key, answer.model, charged, used)
    request_id = f"req_{answer.body['id'][-16:]}"
    state.billing.add([state.billing.row(provider, Lane.LIVE, answer.model, answer.usage,
                                         request_id=request_id)])
    now, gauges = limiter.gauges(provider, key, answer.model, used)
    headers = {"x-request-id" if provider == "openai" else "request-id": request_id,
               **rate_limit_http.rate_headers(provider, now, gauges)}
    return JSONResponse(answer.body, headers=headers)
