"""The live calls' rate-limit budgets, counted per provider, API key and model.

Both providers describe their limits as buckets that refill continuously: a budget of N
per minute gives back N/60 every second, up to N (OpenAI: "reset" is the time until the
bucket is full again; Anthropic: "replenished continuously up to your maximum limit").
That is the default ("rolling") window here. With `fixed_window` a key's first request
opens a one-minute window and everything counted in it is forgotten when it closes.

A request is admitted when every metered dimension has room for its estimate (OpenAI:
the prompt's tokens plus `max_completion_tokens`/`max_tokens`, as OpenAI reserves;
Anthropic: the prompt's input tokens and `max_tokens` output tokens, as Anthropic
estimates OTPM), the estimate is charged, and once answered the charge is corrected to
the real usage (OpenAI: prompt + completion tokens; Anthropic ITPM: input tokens and
cache writes, not cache reads). Refused and failed requests are not counted.

A dimension without a budget (0) is not metered: its headers report a nominal account
(`NOMINAL`) with only the current request counted, so a header-driven client never
slows down for it.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from lanewise.emulator.config import RateLimits

WINDOW_SECONDS = 60.0
MAX_BUCKETS = 10_000  # least recently used (provider, key, model) buckets beyond it are dropped
EPSILON = 1e-9

REQUESTS, TOKENS, INPUT, OUTPUT = "requests", "tokens", "input_tokens", "output_tokens"
#: The dimensions each provider meters. OpenAI has RPM and TPM; Anthropic RPM, ITPM and
#: OTPM, plus a combined TPM when one is budgeted.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "openai": (REQUESTS, TOKENS), "anthropic": (REQUESTS, INPUT, OUTPUT, TOKENS)}
BUDGET_FIELD = {REQUESTS: "requests_per_minute", TOKENS: "tokens_per_minute",
                INPUT: "input_tokens_per_minute", OUTPUT: "output_tokens_per_minute"}
#: What a dimension without a budget reports as its limit (the figures the emulator sent
#: before budgets existed: OpenAI's and Anthropic's published Tier 4 figures).
NOMINAL: dict[str, dict[str, int]] = {
    "openai": {REQUESTS: 10_000, TOKENS: 10_000_000},
    "anthropic": {REQUESTS: 4_000, INPUT: 2_000_000, OUTPUT: 400_000, TOKENS: 2_400_000},
}


@dataclass(frozen=True)
class Cost:
    """What one request counts against a budget."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 1

    def on(self, dimension: str) -> int:
        """The amount of `dimension` this cost takes."""
        if dimension == REQUESTS:
            return self.requests
        if dimension == INPUT:
            return self.input_tokens
        if dimension == OUTPUT:
            return self.output_tokens
        return self.input_tokens + self.output_tokens


NOTHING = Cost(requests=0)


@dataclass
class Meter:
    """The count of one dimension of one bucket."""

    used: float = 0.0
    at: float = 0.0  # rolling: when `used` was last brought up to date
    opened: float | None = None  # fixed: when the current window opened

    def level(self, limit: int, now: float, fixed: bool) -> float:
        """`used` as of `now` (refilled, or a closed window forgotten)."""
        if fixed:
            if self.opened is not None and now >= self.opened + WINDOW_SECONDS:
                self.used, self.opened = 0.0, None
        else:
            self.used = max(0.0, self.used - max(0.0, now - self.at) * limit / WINDOW_SECONDS)
            self.at = now
        return self.used

    def add(self, amount: float, now: float, fixed: bool) -> None:
        """Count `amount` more (negative to give back), opening a fixed window if none is."""
        if fixed and self.opened is None and amount > 0:
            self.opened = now
        self.used = max(0.0, self.used + amount)

    def reset_seconds(self, limit: int, now: float, fixed: bool) -> float:
        """Seconds until nothing is counted any more (the providers' "reset")."""
        if fixed:
            return 0.0 if self.opened is None or self.used <= 0 else max(
                0.0, self.opened + WINDOW_SECONDS - now)
        return self.used * WINDOW_SECONDS / limit

    def wait_seconds(self, amount: int, limit: int, now: float, fixed: bool) -> float:
        """Seconds until `amount` fits (until the window is empty if it never fits)."""
        if fixed or amount > limit:
            return self.reset_seconds(limit, now, fixed)
        return max(0.0, (self.used + amount - limit) * WINDOW_SECONDS / limit)


@dataclass(frozen=True)
class Verdict:
    """Whether a request fits its budget; if not, which dimension refused it and when it
    would fit."""

    allowed: bool
    dimension: str | None = None
    limit: int = 0
    used: int = 0
    requested: int = 0
    wait_seconds: float = 0.0

    @property
    def too_large(self) -> bool:
        """The request is larger than the whole budget: waiting never helps."""
        return self.requested > self.limit


@dataclass(frozen=True)
class Gauge:
    """One dimension as the headers report it."""

    limit: int
    remaining: int
    reset_seconds: float
    metered: bool


@dataclass
class Bucket:
    """The meters of one (provider, key, model)."""

    meters: dict[str, Meter] = field(default_factory=dict)

    def meter(self, dimension: str) -> Meter:
        """The meter of `dimension`, created empty."""
        return self.meters.setdefault(dimension, Meter())


def budget_for(limits: RateLimits, provider: str, key: str, model: str) -> dict[str, int]:
    """Each dimension's per-minute budget for this call: the most specific matching rule
    that sets it (later rules win ties), else the default (0: not metered)."""
    values = {dim: getattr(limits, name) for dim, name in BUDGET_FIELD.items()}
    ranks: dict[str, tuple[int, int]] = {}
    for index, rule in enumerate(limits.rules):
        if not rule.matches(provider, key, model):
            continue
        rank = (rule.specificity(), index)
        for dim, name in BUDGET_FIELD.items():
            value = getattr(rule, name)
            if value is not None and (dim not in ranks or rank >= ranks[dim]):
                ranks[dim], values[dim] = rank, value
    return values


def key_fingerprint(key: str) -> str:
    """A short, stable stand-in for an API key (keys are never shown)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class RateLimiter:
    """Counts live calls against their budgets; thread-safe. `clock` (wall seconds) can
    be replaced, e.g. by a test that moves time on."""

    def __init__(self, limits: Callable[[], RateLimits],
                 clock: Callable[[], float] = time.time) -> None:
        self._limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[tuple[str, str, str], Bucket] = OrderedDict()

    def _bucket(self, provider: str, key: str, model: str) -> Bucket:
        ident = (provider, key, model)
        bucket = self._buckets.get(ident)
        if bucket is None:
            bucket = self._buckets[ident] = Bucket()
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ident)
        return bucket

    def admit(self, provider: str, key: str, model: str, cost: Cost) -> Verdict:
        """Charge `cost` if every metered dimension has room for it; else refuse, naming
        the dimension that needs the longest wait."""
        with self._lock:
            now = self.clock()
            limits = self._limits()
            budget = budget_for(limits, provider, key, model)
            bucket = self._bucket(provider, key, model)
            refusal: Verdict | None = None
            for dim in DIMENSIONS[provider]:
                limit, amount = budget[dim], cost.on(dim)
                if limit <= 0:
                    continue
                meter = bucket.meter(dim)
                used = meter.level(limit, now, limits.fixed_window)
                if used + amount > limit + EPSILON:
                    verdict = Verdict(False, dim, limit, math.ceil(used - EPSILON), amount,
                                      meter.wait_seconds(amount, limit, now, limits.fixed_window))
                    # Name what blocks longest: a request larger than a budget, else the
                    # dimension that takes longest to make room.
                    if refusal is None or (verdict.too_large, verdict.wait_seconds) > (
                            refusal.too_large, refusal.wait_seconds):
                        refusal = verdict
            if refusal is not None:
                return refusal
            for dim in DIMENSIONS[provider]:
                if budget[dim] > 0:
                    bucket.meter(dim).add(cost.on(dim), now, limits.fixed_window)
            return Verdict(True)

    def adjust(self, provider: str, key: str, model: str, charged: Cost, actual: Cost) -> None:
        """Correct an admitted request's charge from its estimate to what it really used
        (`NOTHING` to give it all back)."""
        with self._lock:
            now = self.clock()
            limits = self._limits()
            budget = budget_for(limits, provider, key, model)
            bucket = self._bucket(provider, key, model)
            for dim in DIMENSIONS[provider]:
                if budget[dim] > 0:
                    meter = bucket.meter(dim)
                    meter.level(budget[dim], now, limits.fixed_window)
                    meter.add(actual.on(dim) - charged.on(dim), now, limits.fixed_window)

    def gauges(self, provider: str, key: str, model: str,
               counted: Cost = NOTHING) -> tuple[float, dict[str, Gauge]]:
        """(now, each dimension's gauge) for the headers; `counted` is the request just
        answered, which is all a dimension without a budget reports as used."""
        with self._lock:
            now = self.clock()
            limits = self._limits()
            budget = budget_for(limits, provider, key, model)
            bucket = self._bucket(provider, key, model)
            gauges: dict[str, Gauge] = {}
            for dim in DIMENSIONS[provider]:
                limit = budget[dim]
                if limit > 0:
                    meter = bucket.meter(dim)
                    used = meter.level(limit, now, limits.fixed_window)
                    gauges[dim] = Gauge(limit, max(0, math.floor(limit - used + EPSILON)),
                                        meter.reset_seconds(limit, now, limits.fixed_window),
                                        True)
                else:
                    nominal, amount = NOMINAL[provider][dim], counted.on(dim)
                    gauges[dim] = Gauge(nominal, max(0, nominal - amount),
                                        amount * WINDOW_SECONDS / nominal, False)
            return now, gauges

    def usage(self) -> list[dict[str, object]]:
        """What is counted now, per bucket and metered dimension (keys as fingerprints)."""
        with self._lock:
            idents = list(self._buckets)
        rows: list[dict[str, object]] = []
        for provider, key, model in idents:
            _, gauges = self.gauges(provider, key, model)
            metered = {dim: {"limit": g.limit, "remaining": g.remaining,
                             "reset_seconds": round(g.reset_seconds, 3)}
                       for dim, g in gauges.items() if g.metered}
            if metered:
                rows.append({"provider": provider, "key_sha256": key_fingerprint(key),
                             "model": model, **metered})
        return rows

    def reset(self) -> None:
        """Forget everything counted (every key starts with a full budget)."""
        with self._lock:
            self._buckets.clear()
