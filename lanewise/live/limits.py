"""Rate limits of the live lane, per provider and model: in this process, or (see
`shared_limits.py`) shared by every process through Redis.

Per model, before each call (`acquire`, one atomic step over all of these):

* a concurrency limit (calls in flight);
* requests per minute and tokens per minute (Anthropic also output tokens per minute),
  as token buckets holding a minute's worth and refilled continuously; a call's token
  cost is its estimated input plus its output cap (OpenAI counts both against TPM;
  Anthropic's ITPM counts input, its OTPM output), corrected to the billed usage
  when it ends (`release`);
* the provider's own view from its last rate-limit headers: when it said no requests
  (or fewer tokens than this call needs) remain before its reset, the call waits for
  the reset instead of earning a 429; until a new response refreshes that view, each
  call started counts down its `remaining` here;
* a hold set by a 429's `retry-after`: nobody calls that model before it ends.

`acquire` never blocks: it returns a Permit, or a Throttle saying how long to wait and
why, and the caller (the policy) decides whether the wait fits the latency budget.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass, field

from lanewise.errors import ConfigurationError
from lanewise.live.headers import RateSignal, Remaining
from lanewise.settings import RateLimits, Settings

# A full concurrency limit frees at no known time: look again after this long.
CONCURRENCY_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Cost:
    """What one call counts against a model's limits."""

    tokens: int = 0          # against tokens per minute (see the module docstring)
    output_tokens: int = 0   # against output tokens per minute (Anthropic)


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; give it back with `release`."""

    key: str
    token: str
    cost: Cost
    limits: RateLimits


@dataclass(frozen=True)
class Throttle:
    """Not now: wait `seconds` and ask again; `why` names the limit."""

    seconds: float
    why: str


def model_limits(settings: Settings, provider: str, model: str) -> RateLimits:
    """The live limits of (provider, model): the provider's settings, with the model's
    overrides from `live_model_limits` laid over them."""
    limits = settings.rate_limits(provider)
    overrides = settings.live_model_limits.get(model) or {}
    known = {f.name for f in dataclasses.fields(RateLimits)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigurationError(
            f"LANEWISE_LIVE_MODEL_LIMITS for {model}: unknown limit(s) "
            f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return dataclasses.replace(limits, **overrides)


def limit_key(provider: str, model: str) -> str:
    """The counters' name of (provider, model)."""
    return f"{provider}:{model}"


def used_cost(provider: str, prompt_tokens: int, output_tokens: int) -> Cost:
    """What a finished call really counted, from its billed usage."""
    if provider == "openai":
        return Cost(tokens=prompt_tokens + output_tokens)
    return Cost(tokens=prompt_tokens, output_tokens=output_tokens)


@dataclass
class _Bucket:
    """A token bucket holding `limit` units a minute (None: no limit)."""

    limit: int | None
    level: float = 0.0
    at: float | None = None

    def available(self, now: float) -> float:
        """Units in the bucket at `now`."""
        if self.limit is None:
            return float("inf")
        if self.at is None:
            return float(self.limit)
        return min(float(self.limit), self.level + (now - self.at) * self.limit / 60)

    def wait(self, cost: int, now: float) -> float:
        """Seconds until `cost` units are there (a cost over the limit waits for a full
        bucket)."""
        if self.limit is None or cost <= 0:
            return 0.0
        short = min(cost, self.limit) - self.available(now)
        return max(short, 0.0) * 60 / self.limit

    def take(self, cost: int, now: float) -> None:
        """Take `cost` units (the level may go below zero: later calls wait longer)."""
        if self.limit is not None:
            self.level, self.at = self.available(now) - cost, now

    def refund(self, units: int, now: float) -> None:
        """Give back `units` (negative: take more), never above the limit."""
        if self.limit is not None and units:
            self.level, self.at = min(self.available(now) + units, float(self.limit)), now


@dataclass
class _ModelState:
    """One model's counters in this process."""

    requests: _Bucket
    tokens: _Bucket
    output_tokens: _Bucket
    in_flight: set[str] = field(default_factory=set)
    view: dict[str, Remaining] = field(default_factory=dict)
    hold_until: float = 0.0

    def throttle(self, cost: Cost, limits: RateLimits, now: float) -> Throttle | None:
        """The longest wait any limit asks of a call costing `cost`, or None."""
        waits = [Throttle(self.hold_until - now, "a 429's retry-after")]
        for name, needed in (("requests", 1), ("tokens", cost.tokens),
                             ("output_tokens", cost.output_tokens)):
            seen = self.view.get(name)
            if seen is not None:
                waits.append(Throttle(seen.wait_for(max(needed, 1), now),
                                      f"the provider reports {seen.remaining} {name} left"))
        waits += [Throttle(self.requests.wait(1, now), "requests per minute"),
                  Throttle(self.tokens.wait(cost.tokens, now), "tokens per minute"),
                  Throttle(self.output_tokens.wait(cost.output_tokens, now),
                           "output tokens per minute")]
        if len(self.in_flight) >= limits.max_concurrency:
            waits.append(Throttle(CONCURRENCY_POLL_SECONDS,
                                  f"{limits.max_concurrency} calls in flight"))
        longest = max(waits, key=lambda t: t.seconds)
        return longest if longest.seconds > 0 else None

    def take(self, token: str, cost: Cost, now: float) -> None:
        """Count a call in: buckets, the provider's view, the calls in flight."""
        self.requests.take(1, now)
        self.tokens.take(cost.tokens, now)
        self.output_tokens.take(cost.output_tokens, now)
        for name, units in (("requests", 1), ("tokens", cost.tokens),
                            ("output_tokens", cost.output_tokens)):
            seen = self.view.get(name)
            if seen is not None and seen.reset_at > now:
                self.view[name] = dataclasses.replace(seen, remaining=seen.remaining - units)
        self.in_flight.add(token)

    def observe(self, signal: RateSignal) -> None:
        """Take in what a response said about the limits."""
        for name in ("requests", "tokens", "output_tokens"):
            seen = getattr(signal, name)
            if seen is not None:
                self.view[name] = seen
        if signal.hold_until is not None:
            self.hold_until = max(self.hold_until, signal.hold_until)


class Limiter:
    """The interface both limiters implement; this one keeps counters in the process
    (threads and event loops of one process share them)."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _ModelState] = {}

    def _state(self, key: str, limits: RateLimits) -> _ModelState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _ModelState(
                _Bucket(limits.requests_per_minute), _Bucket(limits.tokens_per_minute),
                _Bucket(limits.output_tokens_per_minute))
        return state

    def acquire(self, key: str, limits: RateLimits, cost: Cost,
                lease_seconds: float) -> Permit | Throttle:
        """A permit for one call now, or how long to wait (never blocks)."""
        now = time.time()
        with self._lock:
            state = self._state(key, limits)
            throttle = state.throttle(cost, limits, now)
            if throttle is not None:
                return throttle
            token = secrets.token_hex(8)
            state.take(token, cost, now)
        return Permit(key, token, cost, limits)

    def release(self, permit: Permit, used: Cost | None, signal: RateSignal | None) -> None:
        """Give the permit back; correct the token counts to what the call `used`
        (None: nothing billed, all refunded) and take in the provider's `signal`."""
        now = time.time()
        used = used or Cost()
        with self._lock:
            state = self._state(permit.key, permit.limits)
            state.in_flight.discard(permit.token)
            state.tokens.refund(permit.cost.tokens - used.tokens, now)
            state.output_tokens.refund(permit.cost.output_tokens - used.output_tokens, now)
            if signal is not None:
                state.observe(signal)

    async def acquire_async(self, key: str, limits: RateLimits, cost: Cost,
                            lease_seconds: float) -> Permit | Throttle:
        """`acquire` for an event loop (in-process counters: no I/O, no thread hop)."""
        return self.acquire(key, limits, cost, lease_seconds)

    async def release_async(self, permit: Permit, used: Cost | None,
                            signal: RateSignal | None) -> None:
        """`release` for an event loop."""
        self.release(permit, used, signal)

    def close(self) -> None:
        """Drop connections (none here)."""
