"""The live lane's rate limits shared by every process and replica through Redis.

The same rules as the in-process `Limiter` (see `limits.py`), kept in Redis and applied
by two Lua scripts, so that checking and taking every limit of a call is one atomic
step and one round trip: `ACQUIRE` (holds, the provider's view, the three buckets and
the in-flight set) and `RELEASE` (give the slot back, correct tokens to the billed
usage, take in the response's rate-limit headers).

Per model, two keys under `<LANEWISE_REDIS_PREFIX>:live:<provider>:<model>`: a hash of
counters and a sorted set of calls in flight, scored by when their lease ends, so the
slot of a process killed mid-call frees itself when its lease (the call's timeout plus
a margin) runs out. Times are the callers' clocks (epoch seconds; hosts are expected to
keep NTP time), numbers travel as strings (Lua would truncate floats in replies).

When Redis cannot be reached the lane keeps answering on in-process limits (logged):
a limiter outage must not take the live lane down with it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from typing import Any

from lanewise.live.headers import RateSignal
from lanewise.live.limits import CONCURRENCY_POLL_SECONDS, Cost, Limiter, Permit, Throttle
from lanewise.settings import RateLimits

log = logging.getLogger("lanewise.live")
# Counters of a model nobody called for this long are dropped (a full bucket again).
STATE_TTL_SECONDS = 600
NAMES = ("requests", "tokens", "output_tokens")

ACQUIRE = f"""
local now = tonumber(ARGV[1])
local limits = {{requests = tonumber(ARGV[5]), tokens = tonumber(ARGV[6]),
                output_tokens = tonumber(ARGV[7])}}
local costs = {{requests = 1, tokens = tonumber(ARGV[8]), output_tokens = tonumber(ARGV[9])}}
local names = {{'requests', 'tokens', 'output_tokens'}}
local wait, why = 0, ''
local function need(seconds, reason)
  if seconds > wait then wait = seconds; why = reason end
end
local function num(field) return tonumber(redis.call('HGET', KEYS[1], field) or '') end
need((num('hold') or 0) - now, "a 429's retry-after")
local levels = {{}}
for _, name in ipairs(names) do
  -- the provider's view: `seen` left at `seen_on`, full at `reset_at` (a straight line)
  local seen, reset_at = num('v_' .. name), num('v_' .. name .. '_at')
  local wanted = math.max(costs[name], 1)
  if seen and reset_at and reset_at > now and seen < wanted then
    local wait_for = reset_at - now
    local cap, seen_on = num('v_' .. name .. '_limit'), num('v_' .. name .. '_seen')
    if cap and seen_on and cap > seen and wanted <= cap and reset_at > seen_on then
      local rate = (cap - seen) / (reset_at - seen_on)
      wait_for = math.max(seen_on + (wanted - seen) / rate - now, 0)
    end
    need(wait_for, 'the provider reports ' .. seen .. ' ' .. name .. ' left')
  end
  local limit = limits[name]
  if limit > 0 then
    local level, at = num('b_' .. name), num('b_' .. name .. '_at')
    local available = limit
    if level and at then available = math.min(limit, level + (now - at) * limit / 60) end
    levels[name] = available
    local short = math.min(costs[name], limit) - available
    if costs[name] > 0 and short > 0 then
      need(short * 60 / limit, string.gsub(name, '_', ' ') .. ' per minute')
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local most = tonumber(ARGV[4])
if redis.call('ZCARD', KEYS[2]) >= most then
  need({CONCURRENCY_POLL_SECONDS}, most .. ' calls in flight')
end
if wait > 0 then return {{tostring(wait), why}} end
for _, name in ipairs(names) do
  if levels[name] then
    redis.call('HSET', KEYS[1], 'b_' .. name, levels[name] - costs[name],
               'b_' .. name .. '_at', now)
  end
  local seen, seen_at = num('v_' .. name), num('v_' .. name .. '_at')
  if seen and seen_at and seen_at > now then
    redis.call('HSET', KEYS[1], 'v_' .. name, seen - costs[name])
  end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[10])
redis.call('EXPIRE', KEYS[2], ARGV[10])
return {{'0', ''}}
"""

RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local now = tonumber(ARGV[2])
local function num(field) return tonumber(redis.call('HGET', KEYS[1], field) or '') end
local function refund(name, units, limit)
  if limit > 0 and units ~= 0 then
    local level, at = num('b_' .. name), num('b_' .. name .. '_at')
    if level and at then
      local available = math.min(limit, level + (now - at) * limit / 60)
      redis.call('HSET', KEYS[1], 'b_' .. name, math.min(limit, available + units),
                 'b_' .. name .. '_at', now)
    end
  end
end
refund('tokens', tonumber(ARGV[3]), tonumber(ARGV[5]))
refund('output_tokens', tonumber(ARGV[4]), tonumber(ARGV[6]))
local names = {'requests', 'tokens', 'output_tokens'}
for i, name in ipairs(names) do
  local remaining, reset_at, cap = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if remaining ~= '' then
    redis.call('HSET', KEYS[1], 'v_' .. name, remaining, 'v_' .. name .. '_at', reset_at,
               'v_' .. name .. '_seen', ARGV[2])
    if cap ~= '' then
      redis.call('HSET', KEYS[1], 'v_' .. name .. '_limit', cap)
    else
      redis.call('HDEL', KEYS[1], 'v_' .. name .. '_limit')
    end
  end
end
if ARGV[16] ~= '' and tonumber(ARGV[16]) > (num('hold') or 0) then
  redis.call('HSET', KEYS[1], 'hold', ARGV[16])
end
redis.call('EXPIRE', KEYS[1], ARGV[17])
return 1
"""


def _acquire_args(token: str, limits: RateLimits, cost: Cost, lease_seconds: float,
                  now: float) -> list[Any]:
    return [repr(now), token, repr(now + lease_seconds), limits.max_concurrency,
            limits.requests_per_minute or 0, limits.tokens_per_minute or 0,
            limits.output_tokens_per_minute or 0, cost.tokens, cost.output_tokens,
            STATE_TTL_SECONDS]


def _release_args(permit: Permit, used: Cost | None, signal: RateSignal | None,
                  now: float) -> list[Any]:
    used = used or Cost()
    args: list[Any] = [permit.token, repr(now), permit.cost.tokens - used.tokens,
                       permit.cost.output_tokens - used.output_tokens,
                       permit.limits.tokens_per_minute or 0,
                       permit.limits.output_tokens_per_minute or 0]
    for name in NAMES:  # ARGV[7..15]: remaining, reset_at, limit of each
        seen = getattr(signal, name) if signal is not None else None
        args += ([seen.remaining, repr(seen.reset_at),
                  "" if seen.limit is None else seen.limit]
                 if seen is not None else ["", "", ""])
    hold = signal.hold_until if signal is not None else None
    return args + [repr(hold) if hold is not None else "", STATE_TTL_SECONDS]


def _throttle_or_none(reply: list[Any]) -> Throttle | None:
    seconds = float(reply[0])
    if seconds <= 0:
        return None
    why = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    return Throttle(seconds, why)


class RedisLimiter(Limiter):
    """Limits kept in Redis, shared by every process using the same URL and prefix."""

    shared = True

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__()
        import redis

        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._url = url
        self._prefix = f"{prefix}:live"
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._acquire = self._client.register_script(ACQUIRE)
        self._release = self._client.register_script(RELEASE)
        # redis.asyncio clients belong to the event loop they were made in.
        self._async: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = (
            weakref.WeakKeyDictionary())
        self._async_lock = threading.Lock()
        self._warned_at = 0.0

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}:{key}", f"{self._prefix}:{key}:in-flight"]

    def _local(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("live limits: Redis at %s unreachable (%s); using this process's "
                        "own limits meanwhile", self._url.split("@")[-1], exc)

    def acquire(self, key: str, limits: RateLimits, cost: Cost,
                lease_seconds: float) -> Permit | Throttle:
        """A permit from Redis for one call now, or how long to wait."""
        token = secrets.token_hex(8)
        try:
            reply = self._acquire(keys=self._keys(key), args=_acquire_args(
                token, limits, cost, lease_seconds, time.time()))
        except self._redis_errors as exc:
            self._local(exc)
            return super().acquire(key, limits, cost, lease_seconds)
        return _throttle_or_none(reply) or Permit(key, "r:" + token, cost, limits)

    def release(self, permit: Permit, used: Cost | None, signal: RateSignal | None) -> None:
        """Give the permit back to Redis (or to the local counters that issued it)."""
        if not permit.token.startswith("r:"):
            return super().release(permit, used, signal)
        args = _release_args(permit, used, signal, time.time())
        args[0] = permit.token[2:]
        try:
            self._release(keys=self._keys(permit.key), args=args)
        except self._redis_errors as exc:  # the slot frees itself when its lease ends
            self._local(exc)

    def _loop_client(self) -> tuple[Any, Any, Any]:
        import asyncio

        import redis.asyncio

        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            with self._async_lock:
                client = redis.asyncio.Redis.from_url(self._url, socket_timeout=2,
                                                      socket_connect_timeout=2)
                found = (client, client.register_script(ACQUIRE),
                         client.register_script(RELEASE))
                self._async[loop] = found
        return found

    async def acquire_async(self, key: str, limits: RateLimits, cost: Cost,
                            lease_seconds: float) -> Permit | Throttle:
        """`acquire` through this event loop's Redis client."""
        token = secrets.token_hex(8)
        try:
            _, acquire, _ = self._loop_client()
            reply = await acquire(keys=self._keys(key), args=_acquire_args(
                token, limits, cost, lease_seconds, time.time()))
        except self._redis_errors as exc:
            self._local(exc)
            return super().acquire(key, limits, cost, lease_seconds)
        return _throttle_or_none(reply) or Permit(key, "r:" + token, cost, limits)

    async def release_async(self, permit: Permit, used: Cost | None,
                            signal: RateSignal | None) -> None:
        """`release` through this event loop's Redis client."""
        if not permit.token.startswith("r:"):
            return super().release(permit, used, signal)
        args = _release_args(permit, used, signal, time.time())
        args[0] = permit.token[2:]
        try:
            _, _, release = self._loop_client()
            await release(keys=self._keys(permit.key), args=args)
        except self._redis_errors as exc:
            self._local(exc)

    def close(self) -> None:
        """Close the sync connection pool (event-loop clients close with their loop)."""
        self._client.close()
