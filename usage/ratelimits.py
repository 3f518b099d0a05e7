"""Per-key RPM and TPM limits with GCRA (a token bucket as one timestamp per key).

With Redis, one Lua script per check makes limits exact across workers and replicas (Redis's
own clock, keys expire after a minute of silence). Without Redis, or while Redis is
unreachable, each process enforces them on its own (documented).

A limit of N per minute allows a burst of N, refilled continuously. A request that would exceed
it is refused with the seconds until it would fit. TPM is charged the prompt estimate up
front and corrected with the real token count afterwards (`adjust`), which never refuses.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.routing_state import reraise_swallowed_cancel

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000

# KEYS[1]: the key's theoretical arrival time (ms). ARGV: interval_ms, cost, force (0/1).
# Returns 0 when admitted, else the milliseconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat < now then new_tat = now end
if ARGV[3] == '0' and new_tat - now > 60000 then
  return math.ceil(new_tat - now - 60000)
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 60000)
return 0
"""


def gcra_step(tat: float, now: float, *, interval: float, cost: float, force: bool) -> tuple[float, float]:
    """Pure GCRA: (new tat, 0) when admitted, (tat unchanged, wait ms) when not."""
    tat = max(tat, now)
    new_tat = max(now, tat + interval * cost)
    if not force and new_tat - now > PERIOD_MS:
        return tat, new_tat - now - PERIOD_MS
    return new_tat, 0.0


class RateLimiter(Protocol):
    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        """None when admitted, else the seconds to wait (for `retry-after`)."""

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        """Charge (or refund, negative) `delta` units without refusing."""


class LocalRateLimiter:
    """This process only; bounded: entries idle for a minute are dropped as others arrive."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def _step(self, name: str, per_minute: int, cost: int, force: bool) -> float | None:
        now = time.monotonic() * 1000
        with self._lock:
            if len(self._tats) >= self._max_entries:
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            tat, wait = gcra_step(self._tats.get(name, now), now, interval=PERIOD_MS / per_minute,
                                  cost=cost, force=force)
            self._tats[name] = tat
        return wait / 1000 if wait else None

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        return self._step(name, per_minute, cost, False)

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        self._step(name, per_minute, delta, True)


class RedisRateLimiter:
    """Shared through Redis; falls back to a LocalRateLimiter while Redis fails."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "gw:rl:",
                 retry_interval_s: float = 1.0) -> None:
        self._script = redis.register_script(_GCRA)
        self._prefix = prefix
        self._local = LocalRateLimiter()
        self._down_until = 0.0
        self._retry_interval_s = retry_interval_s

    async def _run(self, name: str, per_minute: int, cost: int, force: bool) -> float | None:
        if time.monotonic() >= self._down_until:
            try:
                wait_ms = await self._script(keys=[self._prefix + name],
                                             args=[PERIOD_MS / per_minute, cost, int(force)])
                reraise_swallowed_cancel()
                if self._down_until:
                    logger.info("rate limits: Redis is back; limits are shared again")
                    self._down_until = 0.0
                return int(wait_ms) / 1000 if int(wait_ms) else None
            except (RedisError, OSError):
                reraise_swallowed_cancel()
                if not self._down_until:
                    logger.warning("rate limits: Redis unreachable; enforcing per process")
                self._down_until = time.monotonic() + self._retry_interval_s
        return self._local._step(name, per_minute, cost, force)

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        return await self._run(name, per_minute, cost, False)

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        await self._run(name, per_minute, delta, True)
