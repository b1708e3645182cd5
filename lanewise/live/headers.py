"""Reading the providers' rate-limit headers into one provider-neutral signal.

OpenAI sends `x-ratelimit-remaining-requests` / `-tokens` with `x-ratelimit-reset-*` as
durations ("6ms", "1s", "6m0s", "1h2m3.5s": the time until the limit is back to full);
Anthropic sends `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
{limit,remaining,reset}` with resets as RFC 3339 instants. A 429 also carries
`retry-after` (seconds or an HTTP date) and, from OpenAI, `retry-after-ms`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# A reset further away than this is not waited for (a daily limit, a clock gone wrong):
# the latency budget decides anyway, and a stale view must not block for hours.
MAX_RESET_SECONDS = 120.0


@dataclass(frozen=True)
class Remaining:
    """What the provider said is left of one limit at `seen_at`, when (`reset_at`) it is
    full again, and the limit itself when it says (epoch seconds).

    Both providers refill continuously (a bucket), so between two responses what is
    left grows in a straight line from `remaining` at `seen_at` to `limit` at `reset_at`;
    without the limit, nothing is assumed back before `reset_at`.
    """

    remaining: int
    reset_at: float
    limit: int | None = None
    seen_at: float = 0.0

    def _refills(self) -> bool:
        return self.limit is not None and self.limit > self.remaining \
            and self.reset_at > self.seen_at

    def wait_for(self, needed: int, now: float) -> float:
        """Seconds until `needed` units are there (0: now)."""
        if now >= self.reset_at or self.remaining >= needed:
            return 0.0
        if not self._refills() or needed > (self.limit or 0):
            return self.reset_at - now
        assert self.limit is not None
        rate = (self.limit - self.remaining) / (self.reset_at - self.seen_at)
        return max(self.seen_at + (needed - self.remaining) / rate - now, 0.0)


@dataclass(frozen=True)
class RateSignal:
    """The provider's view of our limits after one response.

    `tokens` is the limit our `Cost.tokens` counts against (OpenAI: input plus output;
    Anthropic: input), `output_tokens` Anthropic's output-token limit. `hold_until` is
    set by a 429's `retry-after`: nobody should call that model before it.
    """

    requests: Remaining | None = None
    tokens: Remaining | None = None
    output_tokens: Remaining | None = None
    hold_until: float | None = None

    @property
    def empty(self) -> bool:
        """True when the response said nothing about our limits."""
        return (self.requests is None and self.tokens is None and self.output_tokens is None
                and self.hold_until is None)


def parse_duration(text: str) -> float | None:
    """Seconds of an OpenAI reset duration ("20ms", "1.5s", "6m0s"), or None."""
    text = text.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        try:
            return float(text) if text else None  # a bare number of seconds
        except ValueError:
            return None
    return total


def parse_instant(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 instant ("2026-11-30T12:00:01Z"), or None."""
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """How long a 429 / 5xx asks us to wait (`retry-after-ms`, `retry-after` in seconds
    or as an HTTP date), or None when it does not say."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _remaining(remaining: int | None, reset_at: float | None, limit: int | None,
               now: float) -> Remaining | None:
    if remaining is None or reset_at is None:
        return None
    return Remaining(remaining, min(reset_at, now + MAX_RESET_SECONDS), limit, now)


def _openai(headers: Mapping[str, str], now: float) -> RateSignal:
    found = {}
    for name in ("requests", "tokens"):
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{name}") or "")
        found[name] = _remaining(_int(headers, f"x-ratelimit-remaining-{name}"),
                                 None if reset is None else now + reset,
                                 _int(headers, f"x-ratelimit-limit-{name}"), now)
    return RateSignal(requests=found["requests"], tokens=found["tokens"])


def _anthropic(headers: Mapping[str, str], now: float) -> RateSignal:
    found = {}
    for name in ("requests", "tokens", "input-tokens", "output-tokens"):
        prefix = f"anthropic-ratelimit-{name}"
        reset = parse_instant(headers.get(f"{prefix}-reset") or "")
        found[name] = _remaining(_int(headers, f"{prefix}-remaining"), reset,
                                 _int(headers, f"{prefix}-limit"), now)
    # Our token cost is input tokens: the input limit when sent, else the combined one,
    # whichever leaves less.
    inputs = [r for r in (found["input-tokens"], found["tokens"]) if r is not None]
    tokens = min(inputs, key=lambda r: r.remaining) if inputs else None
    return RateSignal(requests=found["requests"], tokens=tokens,
                      output_tokens=found["output-tokens"])


def read_signal(provider: str, headers: Mapping[str, str] | None, now: float, *,
                status: int | None = None) -> RateSignal | None:
    """The rate-limit signal of one response (`status` 429 adds a hold until its
    `retry-after`), or None when it carries nothing about our limits."""
    if not headers:
        return None
    signal = _openai(headers, now) if provider == "openai" else _anthropic(headers, now)
    if status == 429:
        wait = retry_after_seconds(headers, now)
        if wait is not None:
            signal = RateSignal(signal.requests, signal.tokens, signal.output_tokens,
                                hold_until=now + min(wait, MAX_RESET_SECONDS))
    return None if signal.empty else signal
