"""Rate limits on the wire: each provider's headers, its 429 bodies, and the cost a
request is counted at.

OpenAI sends `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, its resets as Go
durations (`6ms`, `1.5s`, `6m0s`); Anthropic sends `anthropic-ratelimit-{requests,
tokens,input-tokens,output-tokens}-{limit,remaining,reset}`, its resets as RFC 3339
instants, the `tokens` family being the most restrictive of its token limits in effect.
Refusals are 429s with `retry-after` (whole seconds; OpenAI's also `retry-after-ms`)
and the bodies users report from the real services: OpenAI "Rate limit reached for
gpt-4o-mini in organization org-... on requests per min (RPM): Limit 3, Used 3,
Requested 1. Please try again in 20s. ..." (type `requests`/`tokens`, code
`rate_limit_exceeded`); Anthropic `rate_limit_error` "This request would exceed your
organization's rate limit of 30,000 input tokens per minute (org: ..., model: ...)...".
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse

from lanewise.emulator.config import ANTHROPIC_ORGANIZATION_ID, ORGANIZATION_ID
from lanewise.emulator.engine import Answer
from lanewise.emulator.http_errors import anthropic_error, openai_error
from lanewise.emulator.provider_rules import tool_use_system_prompt_tokens
from lanewise.emulator.rate_limits import INPUT, OUTPUT, REQUESTS, TOKENS, Cost, Gauge, Verdict
from lanewise.tokens import count_prompt_tokens

OPENAI_WORDS = {REQUESTS: ("requests per min (RPM)", "requests"),
                TOKENS: ("tokens per min (TPM)", "tokens")}
ANTHROPIC_WORDS = {REQUESTS: "requests", INPUT: "input tokens", OUTPUT: "output tokens",
                   TOKENS: "tokens"}
ANTHROPIC_FAMILIES = ((REQUESTS, "requests"), (INPUT, "input-tokens"),
                      (OUTPUT, "output-tokens"))
OPENAI_LIMITS_PAGE = "https://platform.openai.com/account/rate-limits"


def go_duration(seconds: float) -> str:
    """`seconds` the way OpenAI's reset headers and messages write a duration (Go's
    `time.Duration`: `0s`, `6ms`, `1.5s`, `6m0s`, `1h0m0s`), rounded up to the
    millisecond so a client that waits it out is never early."""
    millis = max(0, math.ceil(round(seconds * 1000, 6)))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(stamp: float) -> str:
    """An instant as Anthropic's reset headers write it, rounded up to the second."""
    return datetime.fromtimestamp(math.ceil(stamp - 1e-6), tz=UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def retry_after_headers(provider: str, wait: float) -> dict[str, str]:
    """`retry-after` in whole seconds (at least 1), and OpenAI's `retry-after-ms`."""
    headers = {"retry-after": str(max(1, math.ceil(wait - 1e-6)))}
    if provider == "openai":
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
    return headers


def openai_headers(gauges: dict[str, Gauge]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers."""
    headers: dict[str, str] = {}
    for dim in (REQUESTS, TOKENS):
        gauge = gauges[dim]
        headers[f"x-ratelimit-limit-{dim}"] = str(gauge.limit)
        headers[f"x-ratelimit-remaining-{dim}"] = str(gauge.remaining)
        headers[f"x-ratelimit-reset-{dim}"] = go_duration(gauge.reset_seconds)
    return headers


def anthropic_headers(now: float, gauges: dict[str, Gauge]) -> dict[str, str]:
    """Anthropic's `anthropic-ratelimit-*` headers; the `tokens` family shows whichever
    token limit in effect has the least room left."""
    headers: dict[str, str] = {}

    def family(name: str, gauge: Gauge) -> None:
        headers[f"anthropic-ratelimit-{name}-limit"] = str(gauge.limit)
        headers[f"anthropic-ratelimit-{name}-remaining"] = str(gauge.remaining)
        headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(now + gauge.reset_seconds)

    for dim, name in ANTHROPIC_FAMILIES:
        family(name, gauges[dim])
    metered = [gauges[d] for d in (TOKENS, INPUT, OUTPUT) if gauges[d].metered]
    candidates = metered or [gauges[INPUT], gauges[OUTPUT]]
    family("tokens", min(candidates, key=lambda g: (g.remaining, -g.reset_seconds)))
    return headers


def rate_headers(provider: str, now: float, gauges: dict[str, Gauge]) -> dict[str, str]:
    """The provider's rate-limit headers for these gauges."""
    return openai_headers(gauges) if provider == "openai" else anthropic_headers(now, gauges)


def refusal(provider: str, model: str, verdict: Verdict,
            headers: dict[str, str]) -> JSONResponse:
    """The provider's 429 for a request over its budget, with `retry-after`."""
    headers = {**headers, **retry_after_headers(provider, verdict.wait_seconds)}
    dim = verdict.dimension or REQUESTS
    if provider == "anthropic":
        message = (
            f"This request would exceed your organization's rate limit of {verdict.limit:,} "
            f"{ANTHROPIC_WORDS[dim]} per minute (org: {ANTHROPIC_ORGANIZATION_ID}, model: "
            f"{model}). For details, refer to: https://docs.claude.com/en/api/rate-limits. You "
            "can see the response headers for current usage. Please reduce the prompt length "
            "or the maximum tokens requested, or try again later. You may also contact sales "
            "at https://claude.com/contact-sales to discuss your options for a rate limit "
            "increase.")
        return anthropic_error(429, message, kind="rate_limit_error", headers=headers)
    words, kind = OPENAI_WORDS[dim]
    if verdict.too_large:
        message = (f"Request too large for {model} in organization {ORGANIZATION_ID} on "
                   f"{words}: Limit {verdict.limit}, Requested {verdict.requested}. The input "
                   "or output tokens must be reduced in order to run successfully. Visit "
                   f"{OPENAI_LIMITS_PAGE} to learn more.")
    else:
        message = (f"Rate limit reached for {model} in organization {ORGANIZATION_ID} on "
                   f"{words}: Limit {verdict.limit}, Used {verdict.used}, Requested "
                   f"{verdict.requested}. Please try again in "
                   f"{go_duration(verdict.wait_seconds)}. Visit {OPENAI_LIMITS_PAGE} to learn "
                   "more.")
    return openai_error(429, message, kind=kind, code="rate_limit_exceeded", headers=headers)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def estimate(provider: str, body: dict[str, Any]) -> Cost:
    """What a request is counted at before it is answered: its prompt's tokens and the
    output it may use (`max_completion_tokens`/`max_tokens`). A malformed body counts
    as one request (it is refused and given back anyway)."""
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    try:
        if provider == "openai":
            rf = body.get("response_format")
            schema = ((rf.get("json_schema") or {}).get("schema")
                      if isinstance(rf, dict) else None)
            prompt = count_prompt_tokens(messages, schema=schema)
            output = _count(body.get("max_completion_tokens") or body.get("max_tokens"))
        else:
            tools = body.get("tools") if isinstance(body.get("tools"), list) else []
            schemas = [t.get("input_schema") for t in tools if isinstance(t, dict)] or None
            prompt = count_prompt_tokens(messages, system=body.get("system"), schema=schemas)
            if tools and isinstance(body.get("model"), str):
                prompt += tool_use_system_prompt_tokens(body["model"], tools,
                                                        body.get("tool_choice"))
            output = _count(body.get("max_tokens"))
    except (AttributeError, TypeError, ValueError):
        return Cost()
    return Cost(input_tokens=prompt, output_tokens=output)


def actual(provider: str, answer: Answer) -> Cost:
    """What an answered request really counts: OpenAI every prompt and completion token;
    Anthropic's input tokens and cache writes (cache reads do not count toward ITPM) and
    its output tokens."""
    usage = answer.usage
    if provider == "openai":
        return Cost(input_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens)
    return Cost(input_tokens=usage.input_tokens + usage.cache_write_tokens
                + usage.cache_write_1h_tokens, output_tokens=usage.output_tokens)
