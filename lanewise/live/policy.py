"""The live call's policy: retries within the latency budget, then the task's fallbacks.

Written once as a generator of actions (`Wait`, `Acquire`, `Send`, `LookupCache`,
`Defer`) that the lane drives twice over: with blocking calls for `call`, with awaits
for `acall` (lane.py). The generator decides; the drivers only do what it yields and
send back the result. Time is read through the `clock` given (monotonic seconds).

For one call, with a budget of B ms starting at t0:

1. A cache-enabled task answers from the result cache when it holds the request.
2. The task's own model is called; 429, 5xx, 529, timeouts and dropped connections
   are retried after the provider's `retry-after` (else a short jittered backoff), at
   most `max_attempts` calls, and never when the wait would pass the model's give-up
   time: t0 + B x `primary_share` when model fallbacks follow, else t0 + B. A wait
   the rate limiter asks for counts the same way. Each call's HTTP timeout is what is
   left until that give-up time.
3. The fallbacks, in the catalog's order: `model` (the prompt rendered again for that
   provider, the same retry rules, the rest of the budget shared evenly among the
   model fallbacks, the last one up to t0 + B); `cache` (an answer stored for the
   task's own request); `defer` (enqueued; the caller gets a handle).

Each model path that gives up adds a line to the reason the ledger records.

A task whose daily or monthly budget is spent (`budget_stop`, the reason, from
`lanewise.budgets.LiveBudgets`) pays for nothing: step 1 still answers from the cache,
no model is called in step 2 or 3 (neither the task's own nor a model fallback), and
the cache and defer fallbacks apply in the catalog's order; the reason opens the
recorded fallback reason, and with none of them answering the call fails with it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from lanewise.catalog import FallbackSpec, TaskSpec
from lanewise.errors import InputError, ProviderError, TransientProviderError
from lanewise.live.headers import retry_after_seconds
from lanewise.live.limits import Cost, Permit, Throttle
from lanewise.providers.base import LiveReply

# A call is not started with less time than this left before its give-up time.
MIN_ATTEMPT_SECONDS = 0.02
# Kept back from the last model path when a cache or defer step follows (their ledger
# read or write must still fit in the budget).
TAIL_RESERVE_SECONDS = 0.05
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class Route:
    """One model the call may go to, with the request rendered for its provider."""

    answered_by: str  # live (the task's own model) | fallback_model
    task: TaskSpec    # the task as sent: provider and model are this route's
    body: dict[str, Any]
    content_hash: str
    cost: Cost        # what one call counts against the model's rate limits
    limit_key: str

    @property
    def provider(self) -> str:
        """The route's provider."""
        return self.task.provider

    @property
    def model(self) -> str:
        """The route's model."""
        return self.task.model


# --- what the generator asks the driver to do -----------------------------------------

@dataclass(frozen=True)
class Wait:
    """Sleep this long; sends back None."""

    seconds: float


@dataclass(frozen=True)
class Acquire:
    """Ask the limiter for leave to call; sends back a Permit or a Throttle."""

    route: Route
    lease_seconds: float


@dataclass(frozen=True)
class Send:
    """Call the provider (releasing the permit afterwards, whatever happens); sends back
    the LiveReply or the exception the call raised."""

    route: Route
    permit: Permit
    timeout: float


@dataclass(frozen=True)
class LookupCache:
    """Look the content hash up in the result cache; sends back a CachedAnswer or None."""

    content_hash: str


@dataclass(frozen=True)
class Defer:
    """Enqueue the row for the batch lane; sends back the QueueItem."""


# --- what it decides -------------------------------------------------------------------

@dataclass
class Decision:
    """How the call ended: answered by a route, by the cache, deferred, or not at all."""

    answered_by: str  # live | fallback_model | cache | deferred | none
    route: Route      # the route that answered, else the task's own
    reply: LiveReply | None = None
    cached: Any = None       # lanewise.cache.CachedAnswer
    queue_item: Any = None   # lanewise.queue.QueueItem
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)
    error: BaseException | None = None  # the last failure (or a non-provider error)

    @property
    def fallback_reason(self) -> str | None:
        """Why the task's own model did not answer ('; '-joined), if it did not."""
        return "; ".join(self.reasons) or None


@dataclass
class _Path:
    answered: LiveReply | None = None
    attempts: int = 0
    reason: str | None = None
    error: BaseException | None = None


def give_up_times(start: float, budget: float, share: float, model_paths: int,
                  tail: bool) -> list[float]:
    """When each model path (the task's own first) stops retrying: the own model at
    `share` of the budget when fallbacks follow, the fallbacks evenly after it, the last
    at the end (less a small reserve when a cache or defer step comes after it)."""
    end = start + budget - (TAIL_RESERVE_SECONDS if tail else 0.0)
    if model_paths == 1:
        return [end]
    first = start + budget * share
    step = (end - first) / (model_paths - 1)
    return [first + step * i for i in range(model_paths)]


def backoff_seconds(attempt: int) -> float:
    """Wait before retry number `attempt` when the provider names none (full jitter)."""
    cap = min(BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
    return random.uniform(cap / 2, cap)


def _describe(route: Route, exc: BaseException) -> str:
    return f"{route.provider}/{route.model}: {exc}"


def _error_headers(exc: BaseException) -> Any:
    from lanewise.providers.sdk_errors import error_headers

    return error_headers(exc)


def model_path(route: Route, give_up: float, max_attempts: int, clock: Callable[[], float],
               now_epoch: Callable[[], float]) -> Generator[Any, Any, _Path]:
    """Calls to one model, retried while the budget allows."""
    path = _Path()
    while True:
        while True:  # leave from the rate limiter, waited for while it fits
            left = give_up - clock()
            got = yield Acquire(route, lease_seconds=max(left, 0) + 5)
            if isinstance(got, Permit):
                break
            assert isinstance(got, Throttle)
            if got.seconds > left - MIN_ATTEMPT_SECONDS:
                path.reason = (f"{route.provider}/{route.model}: rate limit ({got.why}) asks "
                               f"for a {got.seconds:.2f} s wait; the budget leaves "
                               f"{max(left, 0):.2f} s")
                return path
            yield Wait(got.seconds)
        path.attempts += 1
        outcome = yield Send(route, got, timeout=max(give_up - clock(), MIN_ATTEMPT_SECONDS))
        if isinstance(outcome, LiveReply):
            path.answered = outcome
            return path
        path.error = outcome
        path.reason = _describe(route, outcome)
        if not isinstance(outcome, TransientProviderError):
            return path  # not worth a retry: permanent, out of credit, or not ours
        if path.attempts >= max_attempts:
            path.reason += f" (after {path.attempts} attempts)"
            return path
        wait = retry_after_seconds(_error_headers(outcome), now_epoch())
        wait = backoff_seconds(path.attempts) if wait is None else wait
        left = give_up - clock()
        if wait > left - MIN_ATTEMPT_SECONDS:
            path.reason += (f"; a retry in {wait:.2f} s would overrun the budget "
                            f"({max(left, 0):.2f} s left, after {path.attempts} attempt(s))")
            return path
        yield Wait(wait)


def run(task: TaskSpec, primary: Route, render: Callable[[FallbackSpec], Route], *,
        cache_enabled: bool, clock: Callable[[], float], now_epoch: Callable[[], float],
        start: float, budget_stop: str | None = None) -> Generator[Any, Any, Decision]:
    """The whole policy for one call (see the module docstring); `budget_stop`: why no
    model may be paid now, None when one may."""
    live = task.live
    if cache_enabled:
        hit = yield LookupCache(primary.content_hash)
        if hit is not None:
            return Decision("cache", primary, cached=hit)
    steps: list[FallbackSpec | None] = [None, *live.fallbacks]
    model_steps = [i for i, s in enumerate(steps) if s is None or s.kind == "model"]
    tail = any(s is not None and s.kind != "model" for s in steps[model_steps[-1] + 1:])
    give_ups = dict(zip(model_steps, give_up_times(
        start, live.latency_budget_ms / 1000, live.primary_share, len(model_steps), tail),
        strict=True))
    decision = Decision("none", primary)
    if budget_stop is not None:
        decision.reasons.append(budget_stop)
    for index, step in enumerate(steps):
        if step is None or step.kind == "model":
            if budget_stop is not None:
                continue  # the budget is spent: no model is paid, fallbacks' neither
            try:
                route = primary if step is None else render(step)
            except InputError as exc:  # the row does not fit that model (too long, ...)
                decision.reasons.append(f"{step.provider}/{step.model}: {exc}")
                continue
            path = yield from model_path(route, give_ups[index], live.max_attempts, clock,
                                         now_epoch)
            decision.attempts += path.attempts
            if path.answered is not None:
                decision.answered_by, decision.route = route.answered_by, route
                decision.reply = path.answered
                return decision
            decision.reasons.append(path.reason or f"{route.provider}/{route.model}: "
                                    "no answer")
            decision.error = path.error
            if path.error is not None and not isinstance(path.error, ProviderError):
                return decision  # a lanewise bug or bad configuration: stop, record, raise
        elif step.kind == "cache":
            if not cache_enabled:
                decision.reasons.append("cache: the task does not allow caching")
                continue
            hit = yield LookupCache(primary.content_hash)
            if hit is not None:
                decision.answered_by, decision.cached = "cache", hit
                return decision
            decision.reasons.append("cache: no cached answer")
        else:
            item = yield Defer()
            if isinstance(item, Exception):  # the row cannot be queued (not JSON, ...)
                decision.reasons.append(f"defer: {item}")
                continue
            decision.answered_by, decision.queue_item = "deferred", item
            return decision
    return decision
