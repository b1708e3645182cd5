"""The live lane: one task, one row, answered now (`call`, `acall`).

A `LiveLane` is built once per process and settings (`get_lane`) and holds what every
call shares: the catalog and the price table (loaded once), the ledger engine (its
migrations run once, here), the rate limiter (in-process, or Redis when
`LANEWISE_REDIS_URL` is set), one sync SDK client per provider and one async client
per provider and event loop. A call is a plain function call: no Prefect, no new
client, no schema work.

A call renders the request from the row with the batch lane's code
(`lanewise.requests.prepare`, then `adapter.request_body`: the same row gives the same
request, and so the same content hash, in both lanes), runs the policy
(`policy.py`: cache, retries within the latency budget, fallbacks), checks the answer
against the task's schema with the batch lane's check, and records it (`record.py`)
before returning. The first call of a task in a process also builds the clients of its
providers, fallbacks' included, before its budget's clock starts: a fallback never pays
an SDK import inside the budget (`warm` does it ahead, e.g. when a service starts).
A task with a daily or monthly budget it has spent pays for no model call: the policy
gets the reason (`lanewise.budgets.LiveBudgets`: its spend read in the background).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lanewise import cache, queue
from lanewise.batch.steps import _check_output
from lanewise.budgets import LiveBudgets
from lanewise.catalog import Catalog, FallbackSpec, TaskSpec
from lanewise.errors import InputError, LanewiseError, ProviderError
from lanewise.inputs import InputRow
from lanewise.ledger import Ledger
from lanewise.live import policy
from lanewise.live.headers import read_signal
from lanewise.live.limits import Cost, Limiter, limit_key, model_limits, used_cost
from lanewise.live.record import LiveRecorder, cache_entry
from lanewise.pricing import Lane, from_picodollars, load_price_table, to_picodollars
from lanewise.providers import live_adapter, live_client, resolve_credentials
from lanewise.providers.base import LiveReply, ProviderAdapter
from lanewise.requests import RowRejection, estimate_output_tokens, prepare
from lanewise.settings import Settings, get_settings

USAGE_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                 "cache_write_1h_tokens", "output_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class LiveResult:
    """What a live call came to.

    `status`: succeeded | invalid_output (answered, but not as the schema says) |
    failed (nothing answered; `error` says why) | processing (deferred: read it later
    with `lanewise.queue.result(queue_item_id)`). `answered_by`: live (the task's own
    model) | fallback_model | cache | deferred | none.
    """

    status: str
    output: Any            # parsed JSON for a JSON task, the text for a text task
    text: str | None       # the raw answer
    answered_by: str
    provider: str          # who answered (the task's own for cache, deferred, none)
    model: str
    cost_usd: Decimal      # billed at live rates (0 from the cache or deferred)
    latency_ms: float
    attempts: int          # provider calls made, all models together
    fallback_reason: str | None
    error: str | None = None
    call_id: int | None = None        # the live_calls row (None: still in the journal)
    queue_item_id: int | None = None  # when deferred
    cached_from: str | None = None    # when answered from the cache: the original


class LiveLane:
    """Everything a live call needs, built once (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.with_blocks()
        self.catalog = Catalog.from_file(self.settings.catalog_path)
        self.prices = load_price_table(Path(self.settings.prices_path))
        self.ledger = Ledger(self.settings.resolved_database_url)
        self.recorder = LiveRecorder(self.ledger, self.settings.home / "live-journal.jsonl",
                                     fsync=self.settings.live_record_fsync)
        if self.settings.redis_url:
            from lanewise.live.shared_limits import RedisLimiter

            self.limiter: Limiter = RedisLimiter(self.settings.redis_url,
                                                 self.settings.redis_prefix)
        else:
            self.limiter = Limiter()
        # What budgeted tasks spent today and this month, read every few seconds.
        self.budgets = LiveBudgets(self.ledger, self.settings.budget_refresh_seconds)
        self._lock = threading.Lock()
        self._creds: dict[str, Any] = {}
        self._adapters: dict[str, ProviderAdapter] = {}
        self._loop_adapters: weakref.WeakKeyDictionary[Any, dict[str, ProviderAdapter]] = (
            weakref.WeakKeyDictionary())
        self._tasks: dict[str, TaskSpec] = {}
        self._fallback_tasks: dict[tuple[str, str, str], TaskSpec] = {}
        self._model_limits: dict[str, Any] = {}

    # --- clients and routes -----------------------------------------------------------

    def adapter(self, provider: str) -> ProviderAdapter:
        """The provider's adapter over the lane's sync client (built on first use)."""
        found = self._adapters.get(provider)
        if found is None:
            with self._lock:
                found = self._adapters.get(provider)
                if found is None:
                    creds = self._creds.get(provider) or resolve_credentials(
                        provider, self.settings)
                    self._creds[provider] = creds
                    found = live_adapter(provider, live_client(provider, creds))
                    self._adapters[provider] = found
        return found

    def async_adapter(self, provider: str) -> ProviderAdapter:
        """The provider's adapter over this event loop's async client."""
        loop = asyncio.get_running_loop()
        adapters = self._loop_adapters.get(loop)
        if adapters is None:
            adapters = self._loop_adapters.setdefault(loop, {})
        found = adapters.get(provider)
        if found is None:
            sync = self.adapter(provider)
            found = live_adapter(provider, sync.client,  # type: ignore[attr-defined]
                                 live_client(provider, self._creds[provider],
                                             asynchronous=True))
            adapters[provider] = found
        return found

    def task(self, name: str) -> TaskSpec:
        """The task's spec; on first use its providers' clients are built."""
        spec = self._tasks.get(name)
        if spec is None:
            spec = self.catalog.get(name)
            for provider in {spec.provider, *(f.provider for f in spec.live.fallbacks
                                              if f.kind == "model")}:
                self.adapter(provider)  # type: ignore[arg-type]
            for model in {spec.model, *(f.model for f in spec.live.fallbacks if f.model)}:
                self.prices.price(model)  # an unpriced model fails now, not after a call
            self._tasks[name] = spec
        return spec

    def warm(self, tasks: list[str] | None = None) -> None:
        """Build the clients of these tasks' providers now (default: every task)."""
        for name in tasks if tasks is not None else list(self.catalog.tasks):
            self.task(name)

    def route(self, task: TaskSpec, row: Mapping[str, Any], answered_by: str) -> policy.Route:
        """The request for `row` as `task`'s provider takes it (batch lane's code)."""
        prepared = prepare(task, InputRow(1, dict(row)))
        if isinstance(prepared, RowRejection):
            raise InputError(prepared.reason, field=prepared.field)
        body = self.adapter(task.provider).request_body(task, prepared)
        output, _ = estimate_output_tokens(task)
        cost = (Cost(tokens=prepared.estimated_tokens + output) if task.provider == "openai"
                else Cost(tokens=prepared.estimated_tokens, output_tokens=output))
        return policy.Route(answered_by, task, body,
                            cache.content_hash(task.provider, task.model, body), cost,
                            limit_key(task.provider, task.model))

    def _fallback_route(self, task: TaskSpec, row: Mapping[str, Any],
                        step: FallbackSpec) -> policy.Route:
        key = (task.name, step.provider or "", step.model or "")
        spec = self._fallback_tasks.get(key)
        if spec is None:
            spec = task.model_copy(update={"provider": step.provider, "model": step.model})
            self._fallback_tasks[key] = spec
        return self.route(spec, row, "fallback_model")

    def _plan(self, task: TaskSpec, row: Mapping[str, Any], start: float,
              budget_stop: str | None) -> Generator[Any, Any, policy.Decision]:
        return policy.run(task, self.route(task, row, "live"),
                          lambda step: self._fallback_route(task, row, step),
                          cache_enabled=task.cache.enabled, clock=time.monotonic,
                          now_epoch=time.time, start=start, budget_stop=budget_stop)

    # --- the sync and async drivers ---------------------------------------------------

    def call(self, task_name: str, row: Mapping[str, Any], *,
             context: Mapping[str, Any] | None = None) -> LiveResult:
        """Answer one row of a task now (see the module docstring)."""
        task = self.task(task_name)
        start = time.monotonic()  # the budget's clock (after a first call's client build)
        steps = self._plan(task, row, start, self.budgets.stop_reason(task))
        result: Any = None
        try:
            while True:
                action = steps.send(result)
                if isinstance(action, policy.Send):
                    result = self._send(action)
                elif isinstance(action, policy.Acquire):
                    result = self.limiter.acquire(
                        action.route.limit_key, self._limits(action.route), action.route.cost,
                        action.lease_seconds)
                elif isinstance(action, policy.Wait):
                    time.sleep(action.seconds)
                    result = None
                elif isinstance(action, policy.LookupCache):
                    result = self._lookup(task, action.content_hash)
                else:
                    result = self._defer(task, row)
        except StopIteration as done:
            decision: policy.Decision = done.value
        return self._finish(task, decision, context, start, row)

    async def acall(self, task_name: str, row: Mapping[str, Any], *,
                    context: Mapping[str, Any] | None = None) -> LiveResult:
        """`call` for an event loop: async SDK clients, the ledger in a worker thread."""
        task = self.task(task_name)
        start = time.monotonic()
        if self.budgets.unread(task):  # a budgeted task's first read, off the event loop
            await asyncio.to_thread(self.budgets.refresh, task)
        steps = self._plan(task, row, start, self.budgets.stop_reason(task))
        result: Any = None
        try:
            while True:
                action = steps.send(result)
                if isinstance(action, policy.Send):
                    result = await self._send_async(action)
                elif isinstance(action, policy.Acquire):
                    result = await self.limiter.acquire_async(
                        action.route.limit_key, self._limits(action.route), action.route.cost,
                        action.lease_seconds)
                elif isinstance(action, policy.Wait):
                    await asyncio.sleep(action.seconds)
                    result = None
                elif isinstance(action, policy.LookupCache):
                    result = await asyncio.to_thread(self._lookup, task, action.content_hash)
                else:
                    result = await asyncio.to_thread(self._defer, task, row)
        except StopIteration as done:
            decision: policy.Decision = done.value
        return await asyncio.to_thread(self._finish, task, decision, context, start, row)

    def _limits(self, route: policy.Route) -> Any:
        found = self._model_limits.get(route.limit_key)
        if found is None:
            found = self._model_limits[route.limit_key] = model_limits(
                self.settings, route.provider, route.model)
        return found

    def _send(self, send: policy.Send) -> LiveReply | Exception:
        reply: LiveReply | None = None
        error: Exception | None = None
        try:
            reply = self.adapter(send.route.provider).live_reply(send.route.body,
                                                                 timeout=send.timeout)
            return reply
        except Exception as exc:  # noqa: BLE001 - handed to the policy, recorded, raised
            error = exc
            return exc
        finally:
            self.limiter.release(*self._release_args(send, reply, error))

    async def _send_async(self, send: policy.Send) -> LiveReply | Exception:
        reply: LiveReply | None = None
        error: Exception | None = None
        try:
            reply = await self.async_adapter(send.route.provider).live_reply_async(
                send.route.body, timeout=send.timeout)
            return reply
        except Exception as exc:  # noqa: BLE001 - handed to the policy, recorded, raised
            error = exc
            return exc
        finally:
            await self.limiter.release_async(*self._release_args(send, reply, error))

    @staticmethod
    def _release_args(send: policy.Send, reply: LiveReply | None,
                      error: Exception | None) -> tuple[Any, Cost | None, Any]:
        from lanewise.providers.sdk_errors import error_headers

        provider = send.route.provider
        usage = reply.outcome.usage if reply is not None else None
        used = used_cost(provider, usage.prompt_tokens, usage.output_tokens) \
            if usage is not None else None
        headers = reply.headers if reply is not None else (
            error_headers(error) if error is not None else None)
        signal = read_signal(provider, headers, time.time(),
                             status=getattr(error, "status_code", None))
        return send.permit, used, signal

    def _lookup(self, task: TaskSpec, content_hash: str) -> Any:
        return cache.lookup(self.ledger, content_hash, max_age_hours=task.cache.ttl_hours)

    def _defer(self, task: TaskSpec, row: Mapping[str, Any]) -> Any:
        key = row.get(task.input.key)
        try:
            return queue.enqueue(self.ledger, task.name, "" if key is None else str(key),
                                 dict(row), catalog=self.catalog)
        except LanewiseError as exc:
            return exc

    # --- the record -------------------------------------------------------------------

    def _finish(self, task: TaskSpec, decision: policy.Decision,
                context: Mapping[str, Any] | None, start: float,
                request_row: Mapping[str, Any]) -> LiveResult:
        latency_ms = (time.monotonic() - start) * 1000
        route = decision.route
        usage_row = dict.fromkeys(USAGE_COLUMNS, 0)
        text, output, problem, cost, cached_from, item_id = None, None, None, 0, None, None
        answer = None
        if decision.reply is not None:
            outcome = decision.reply.outcome
            text = outcome.text
            problem = _check_output(SimpleNamespace(task=task), text)
            status = "invalid_output" if problem else "succeeded"
            if outcome.usage is not None:
                usage_row = {c: getattr(outcome.usage, c) for c in USAGE_COLUMNS}
                try:
                    cost = to_picodollars(self.prices.cost_usd(route.model, outcome.usage,
                                                               Lane.LIVE))
                except LanewiseError as exc:  # billed, but the price table cannot price it
                    status, problem, decision.error = "failed", f"unpriced usage: {exc}", exc
            if status == "succeeded" and task.cache.enabled and text is not None:
                answer = cache_entry(task.name, route.content_hash, route.provider,
                                     route.model, text, cost, task.cache.ttl_hours)
        elif decision.cached is not None:
            status, text = "succeeded", decision.cached.output_text
            cached_from = decision.cached.source
        elif decision.queue_item is not None:
            status, item_id = "processing", decision.queue_item.id
        else:
            status = "failed"
            problem = decision.fallback_reason or (str(decision.error) if decision.error
                                                   else "no answer")
        if status == "succeeded":
            output = json.loads(text) if task.output.type == "json" else text
        row = {"task": task.name, "provider": route.provider, "model": route.model,
               "answered_by": decision.answered_by, "status": status,
               "content_hash": route.content_hash,
               "context": None if context is None else json.dumps(
                   context, ensure_ascii=False, default=str),
               "output_text": text, "error": problem,
               "fallback_reason": decision.fallback_reason,
               "attempts": decision.attempts, "latency_ms": latency_ms, **usage_row,
               "cost_picodollars": cost, "cached_from": cached_from,
               "queue_item_id": item_id, "created_at": time.time(),
               # The input row, so `lanewise whatif --sample` can send it again.
               "request_row": json.dumps(dict(request_row), ensure_ascii=False,
                                         default=str)}
        call_id = self.recorder.write(row, answer)
        self.budgets.add(task, cost)  # after the write: a read meanwhile counts it twice
        if status == "failed" and decision.error is not None and not isinstance(
                decision.error, ProviderError):
            # Not a provider's failure (an unpriceable usage, a bug): recorded, then
            # raised, since no fallback can mend it.
            raise decision.error
        return LiveResult(status=status, output=output, text=text,
                          answered_by=decision.answered_by, provider=route.provider,
                          model=route.model, cost_usd=from_picodollars(cost),
                          latency_ms=latency_ms, attempts=decision.attempts,
                          fallback_reason=row["fallback_reason"], error=problem,
                          call_id=call_id, queue_item_id=item_id, cached_from=cached_from)

    def close(self) -> None:
        """Close the clients, the limiter's connections and the ledger engine."""
        for adapter in self._adapters.values():
            adapter.client.close()  # type: ignore[attr-defined]
        self.limiter.close()
        self.ledger.engine.dispose()


_lanes: dict[int, tuple[Settings, LiveLane]] = {}
_lanes_lock = threading.Lock()


def get_lane(settings: Settings | None = None) -> LiveLane:
    """The process's lane for `settings` (default: the process-wide settings)."""
    settings = settings or get_settings()
    found = _lanes.get(id(settings))
    if found is not None and found[0] is settings:
        return found[1]
    with _lanes_lock:
        found = _lanes.get(id(settings))
        if found is None or found[0] is not settings:
            found = (settings, LiveLane(settings))
            _lanes[id(settings)] = found
        return found[1]


def close_lanes() -> None:
    """Close and forget every lane of the process (tests, shutdown)."""
    with _lanes_lock:
        lanes = [lane for _, lane in _lanes.values()]
        _lanes.clear()
    for lane in lanes:
        lane.close()
