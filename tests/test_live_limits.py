"""The live lane's rate limits: the providers' headers read, the limiter's rules in
process and in Redis, limits shared by two real processes, and header-driven slowing
that waits for the provider's reset instead of earning a 429."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from lanewise.emulator.config import BudgetRule
from lanewise.emulator.config import RateLimits as EmulatorRateLimits
from lanewise.errors import ConfigurationError
from lanewise.live.headers import (
    RateSignal,
    Remaining,
    parse_duration,
    read_signal,
    retry_after_seconds,
)
from lanewise.live.lane import LiveLane
from lanewise.live.limits import Cost, Limiter, Permit, Throttle, model_limits
from lanewise.settings import RateLimits, Settings
from tests.live_helpers import billed_live, live_settings, recorded, ticket, write_catalog

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = 1_800_000_000.0


def redis_reachable() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means: no Redis here
        return False


needs_redis = pytest.mark.skipif(not redis_reachable(), reason="no Redis at 127.0.0.1:6379")


# --- the headers ----------------------------------------------------------------------

def test_openai_durations_and_headers():
    assert [parse_duration(t) for t in ("6ms", "1s", "1.5s", "6m0s", "1h2m3.5s", "0s")] == [
        0.006, 1.0, 1.5, 360.0, 3723.5, 0.0]
    assert parse_duration("soon") is None
    signal = read_signal("openai", {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400", "x-ratelimit-reset-tokens": "36s"}, NOW)
    assert signal.requests == Remaining(0, NOW + 60, 60, NOW)
    assert signal.tokens == Remaining(400, NOW + 36, 1000, NOW)
    assert signal.hold_until is None


def test_anthropic_headers_and_a_429s_retry_after():
    reset = datetime.fromtimestamp(NOW + 30, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"anthropic-ratelimit-requests-limit": "50",
               "anthropic-ratelimit-requests-remaining": "3",
               "anthropic-ratelimit-requests-reset": reset,
               "anthropic-ratelimit-input-tokens-remaining": "9000",
               "anthropic-ratelimit-input-tokens-reset": reset,
               "anthropic-ratelimit-tokens-remaining": "5000",
               "anthropic-ratelimit-tokens-reset": reset,
               "anthropic-ratelimit-output-tokens-remaining": "800",
               "anthropic-ratelimit-output-tokens-reset": reset,
               "retry-after": "7"}
    signal = read_signal("anthropic", headers, NOW, status=429)
    assert signal.requests == Remaining(3, NOW + 30, 50, NOW)
    assert signal.tokens.remaining == 5000  # the tighter of input and combined
    assert signal.output_tokens.remaining == 800
    assert signal.hold_until == NOW + 7
    assert read_signal("anthropic", headers, NOW).hold_until is None  # only a 429 holds
    http_date = format_datetime(datetime.fromtimestamp(NOW + 4, tz=timezone.utc),
                                usegmt=True)
    assert retry_after_seconds({"retry-after": http_date}, NOW) == 4
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "1"}, NOW) == 0.25
    assert read_signal("openai", {"x-request-id": "r"}, NOW) is None


def test_what_is_left_refills_in_a_line_until_the_reset():
    seen = Remaining(0, reset_at=NOW + 60, limit=60, seen_at=NOW)
    assert seen.wait_for(1, NOW) == pytest.approx(1.0)       # one back per second
    assert seen.wait_for(1, NOW + 1) == pytest.approx(0.0)
    assert seen.wait_for(3, NOW + 1) == pytest.approx(2.0)
    assert Remaining(0, NOW + 60, None, NOW).wait_for(1, NOW) == 60  # no limit: the reset
    assert seen.wait_for(1, NOW + 61) == 0


# --- the limiter, in process and in Redis ---------------------------------------------

@pytest.fixture(params=["local", pytest.param("redis", marks=needs_redis)])
def limiter(request):
    if request.param == "local":
        yield Limiter()
        return
    from lanewise.live.shared_limits import RedisLimiter

    prefix = f"lanewise-test-{uuid.uuid4().hex[:8]}"
    shared = RedisLimiter(REDIS_URL, prefix)
    yield shared
    for key in shared._client.scan_iter(f"{prefix}:*"):
        shared._client.delete(key)
    shared.close()


def limits(**values) -> RateLimits:
    base = {"requests_per_minute": None, "tokens_per_minute": None,
            "output_tokens_per_minute": None, "max_concurrency": 8}
    return RateLimits(**{**base, **values})


def test_requests_per_minute(limiter):
    rpm = limits(requests_per_minute=2)
    for _ in range(2):
        assert isinstance(limiter.acquire("openai:m", rpm, Cost(), 10), Permit)
    refused = limiter.acquire("openai:m", rpm, Cost(), 10)
    assert isinstance(refused, Throttle) and refused.why == "requests per minute"
    assert refused.seconds == pytest.approx(30, abs=1)  # 2 a minute: one back in 30 s
    assert isinstance(limiter.acquire("openai:other", rpm, Cost(), 10), Permit)


def test_concurrency_frees_on_release(limiter):
    one = limits(max_concurrency=1)
    permit = limiter.acquire("anthropic:m", one, Cost(), 10)
    busy = limiter.acquire("anthropic:m", one, Cost(), 10)
    assert isinstance(busy, Throttle) and "1 calls in flight" in busy.why
    limiter.release(permit, None, None)
    assert isinstance(limiter.acquire("anthropic:m", one, Cost(), 10), Permit)


def test_tokens_are_corrected_to_the_billed_usage(limiter):
    tpm = limits(tokens_per_minute=1000)
    first = limiter.acquire("openai:m", tpm, Cost(tokens=800), 10)
    refused = limiter.acquire("openai:m", tpm, Cost(tokens=800), 10)
    assert isinstance(refused, Throttle) and refused.why == "tokens per minute"
    limiter.release(first, Cost(tokens=100), None)  # it used 100 of the 800 it reserved
    assert isinstance(limiter.acquire("openai:m", tpm, Cost(tokens=800), 10), Permit)


def test_the_providers_view_and_a_429_hold(limiter):
    free = limits()
    now = time.time()
    permit = limiter.acquire("anthropic:m", free, Cost(), 10)
    limiter.release(permit, None, RateSignal(requests=Remaining(0, now + 20, 10, now)))
    waiting = limiter.acquire("anthropic:m", free, Cost(), 10)
    assert isinstance(waiting, Throttle) and "provider reports 0 requests left" in waiting.why
    assert waiting.seconds == pytest.approx(2, abs=0.2)  # 10 per 20 s: one in 2 s
    permit = limiter.acquire("anthropic:h", free, Cost(), 10)
    limiter.release(permit, None, RateSignal(hold_until=time.time() + 3))
    held = limiter.acquire("anthropic:h", free, Cost(), 10)
    assert isinstance(held, Throttle) and "retry-after" in held.why
    assert held.seconds == pytest.approx(3, abs=0.2)


def test_the_async_api_shares_the_same_counters(limiter):
    import asyncio

    one = limits(max_concurrency=1)

    async def both():
        permit = await limiter.acquire_async("openai:a", one, Cost(), 10)
        busy = limiter.acquire("openai:a", one, Cost(), 10)  # the sync side sees it
        await limiter.release_async(permit, None, None)
        return permit, busy, await limiter.acquire_async("openai:a", one, Cost(), 10)

    permit, busy, again = asyncio.run(both())
    assert isinstance(permit, Permit) and isinstance(again, Permit)
    assert isinstance(busy, Throttle)


def test_an_unreachable_redis_leaves_the_limits_in_process(caplog):
    from lanewise.live.shared_limits import RedisLimiter

    limiter = RedisLimiter("redis://127.0.0.1:1/0", "lanewise-test")  # nothing listens
    one = limits(max_concurrency=1)
    permit = limiter.acquire("openai:m", one, Cost(), 10)
    assert isinstance(permit, Permit) and not permit.token.startswith("r:")
    assert isinstance(limiter.acquire("openai:m", one, Cost(), 10), Throttle)
    limiter.release(permit, None, None)
    assert isinstance(limiter.acquire("openai:m", one, Cost(), 10), Permit)
    assert "unreachable" in caplog.text
    limiter.close()


def test_per_model_overrides_are_checked(tmp_path):
    settings = Settings(home=tmp_path, anthropic_requests_per_minute=50,
                        live_model_limits={"claude-opus-4-5": {"max_concurrency": 2}})
    assert model_limits(settings, "anthropic", "claude-opus-4-5") == RateLimits(50, None, None, 2)
    assert model_limits(settings, "anthropic", "claude-haiku-4-5").max_concurrency == 8
    wrong = Settings(home=tmp_path, live_model_limits={"m": {"rpm": 1}})
    with pytest.raises(ConfigurationError, match="unknown limit"):
        model_limits(wrong, "openai", "m")


# --- through the lane, against the emulator -------------------------------------------

CHILD = """
import json, sys
from lanewise.live import call
for i in range(int(sys.argv[1]), int(sys.argv[2])):
    r = call("reply-draft", {"ticket_id": f"C-{i}", "body": f"Child ticket {i}."})
    print(json.dumps({"status": r.status, "reason": r.fallback_reason}), flush=True)
"""


@needs_redis
def test_limits_are_shared_by_two_processes_through_redis(emulator, tmp_path):
    catalog = write_catalog(tmp_path / "c", reply_draft={"live": {
        "latency_budget_ms": 500, "fallbacks": []}})
    env = {"LANEWISE_HOME": str(tmp_path / "home"), "LANEWISE_EMULATOR_URL": emulator.url,
           "LANEWISE_CATALOG_PATH": str(catalog), "LANEWISE_REDIS_URL": REDIS_URL,
           "LANEWISE_REDIS_PREFIX": f"lanewise-test-{uuid.uuid4().hex[:8]}",
           "LANEWISE_ANTHROPIC_REQUESTS_PER_MINUTE": "3"}
    since = time.time()
    settings = Settings(home=tmp_path / "home", emulator_url=emulator.url,
                        catalog_path=catalog, redis_url=REDIS_URL,
                        redis_prefix=env["LANEWISE_REDIS_PREFIX"],
                        anthropic_requests_per_minute=3)
    lane = LiveLane(settings)
    try:
        mine = [lane.call("reply-draft", ticket(i)) for i in range(2)]
        child = subprocess.run([sys.executable, "-c", CHILD, "0", "3"], capture_output=True,
                               text=True, timeout=120, env={**os.environ, **env})
        assert child.returncode == 0, child.stderr
        theirs = [json.loads(line) for line in child.stdout.splitlines()]
    finally:
        for key in lane.limiter._client.scan_iter(f"{env['LANEWISE_REDIS_PREFIX']}:*"):
            lane.limiter._client.delete(key)
        lane.close()
    assert [r.status for r in mine] == ["succeeded", "succeeded"]
    # 3 a minute between both processes: the child gets the one left, then waits ~20 s,
    # which its 500 ms budget cannot hold.
    assert [r["status"] for r in theirs] == ["succeeded", "failed", "failed"]
    assert all("requests per minute" in r["reason"] for r in theirs[1:])
    assert billed_live(emulator, since)[0] == 3


@pytest.mark.parametrize("task, provider, model", [
    ("ticket-tagging", "openai", "gpt-4o-mini"),
    ("ticket-summary", "anthropic", "claude-haiku-4-5")])
def test_the_providers_headers_slow_calls_down_before_a_429(emulator, tmp_path, task,
                                                            provider, model):
    rpm = 60  # the emulator's budget: one request back every second
    emulator.state.set_rate_limits(EmulatorRateLimits(rules=[BudgetRule(
        provider=provider, model=model, requests_per_minute=rpm)]))
    try:
        catalog = write_catalog(tmp_path / "c", **{task.replace("-", "_"): {
            "cache": {"enabled": False}, "live": {"latency_budget_ms": 5000,
                                                  "fallbacks": []}}})
        lane = LiveLane(live_settings(tmp_path, emulator, catalog_path=catalog))
        refused_before = emulator.state.stats["rate_limited"]
        try:
            started = time.monotonic()
            burst = [lane.call(task, ticket(i)) for i in range(rpm)]
            burst_seconds = time.monotonic() - started
            paced = [lane.call(task, ticket(1000 + i)) for i in range(6)]
            paced_seconds = time.monotonic() - started - burst_seconds
        finally:
            lane.close()
    finally:
        emulator.state.set_rate_limits(None)
    results = burst + paced
    assert {(r.status, r.attempts) for r in results} == {("succeeded", 1)}
    assert emulator.state.stats["rate_limited"] == refused_before  # never a 429
    # The burst emptied the budget but for what refilled meanwhile (one a second, plus
    # one for rounding); the six calls after it waited for the rest, a second each.
    waited_for = 6 - burst_seconds * rpm / 60 - 1
    assert paced_seconds >= 0.8 * waited_for * 60 / rpm
    assert all(r["attempts"] == 1 for r in recorded(lane.ledger.engine))
