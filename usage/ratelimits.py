"""Per-key RPM and TPM limits with GCRA (a token bucket as one timestamp per key).

With Redis, one Lua script per check (`lua/gcra.lua`) makes limits exact across workers and
replicas (Redis's own clock, keys expire after a minute of silence). Without Redis, or while
Redis is unreachable (`gateway.shared_state`), each process enforces them on its own
(documented).

A limit of N per minute allows a burst of N, refilled continuously. A request that would exceed
it is refused with the seconds until it would fit. TPM is charged the prompt estimate up
front and corrected with the real token count afterwards (`adjust`), which never refuses.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from gateway.shared_state import LuaScript, SharedState

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000

_GCRA = LuaScript.beside(__file__, "gcra.lua")


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit to charge: `cost` units of `per_minute` on the counter `name`."""
    name: str
    per_minute: int
    cost: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The limit that refused, and the seconds until the request would fit."""
    name: str
    wait_s: float


def gcra_step(tat: float, now: float, *, interval: float, cost: float,
              force: bool) -> tuple[float, float]:
    """Pure GCRA: (new tat, 0) when admitted, (tat unchanged, wait ms) when not."""
    # The backlog is computed as a difference first: `(now + x) - now` on a fractional clock
    # reading can exceed x by a rounding error, which refused a burst of exactly the limit
    # about once in a hundred checks.
    backlog = max(tat - now, 0.0) + interval * cost
    if not force and backlog > PERIOD_MS:
        return max(tat, now), backlog - PERIOD_MS
    return now + max(backlog, 0.0), 0.0


class RateLimiter(Protocol):
    async def acquire_all(self, limits: Sequence[Limit]) -> Refusal | None:
        """Charge every limit, or none when one would be exceeded (then returns which)."""

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        """None when admitted, else the seconds to wait (for `retry-after`)."""

    def adjust_queued(self, pipe, name: str, *, per_minute: int, delta: int) -> bool:
        """Queue `adjust` on a Redis pipeline the caller runs with
        `gateway.shared_state.pipeline_execute` (redo: `adjust`, for a NOSCRIPT answer);
        False when it must be made with `adjust` instead."""

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        """Charge (or refund, negative) `delta` units without refusing."""


class LocalRateLimiter:
    """This process only; bounded: entries idle for a minute are dropped as others arrive."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def _step(self, limits: Sequence[Limit], force: bool) -> Refusal | None:
        now = time.monotonic() * 1000
        with self._lock:
            if len(self._tats) >= self._max_entries:
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            new_tats = []
            for limit in limits:
                tat, wait = gcra_step(self._tats.get(limit.name, now), now,
                                      interval=PERIOD_MS / limit.per_minute, cost=limit.cost,
                                      force=force)
                if wait:
                    return Refusal(name=limit.name, wait_s=wait / 1000)
                new_tats.append(tat)
            for limit, tat in zip(limits, new_tats):
                self._tats[limit.name] = tat
        return None

    async def acquire_all(self, limits: Sequence[Limit]) -> Refusal | None:
        return self._step(limits, False)

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        refusal = self._step([Limit(name, per_minute, cost)], False)
        return refusal.wait_s if refusal else None

    def adjust_queued(self, pipe, name: str, *, per_minute: int, delta: int) -> bool:
        return False

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        self._step([Limit(name, per_minute, delta)], True)


class RedisRateLimiter:
    """Shared through Redis; a LocalRateLimiter serves while Redis is unreachable."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "gw:rl:",
                 retry_interval_s: float = 1.0) -> None:
        self._shared = SharedState(redis, name="rate limits",
                                   fallback="each process enforces them on its own",
                                   logger=logger, retry_interval_s=retry_interval_s)
        self._prefix = prefix
        self._local = LocalRateLimiter()

    async def _run(self, limits: Sequence[Limit], force: bool) -> Refusal | None:
        async def shared() -> Refusal | None:
            result = await _GCRA(self._shared.redis,
                                 keys=[self._prefix + limit.name for limit in limits],
                                 args=_gcra_args(limits, force))
            wait_ms = int(result[0])
            if not wait_ms:
                return None
            return Refusal(name=limits[int(result[1]) - 1].name, wait_s=wait_ms / 1000)

        async def local() -> Refusal | None:
            return self._local._step(limits, force)

        return await self._shared.run(shared, local)

    async def acquire_all(self, limits: Sequence[Limit]) -> Refusal | None:
        return await self._run(limits, False)

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        refusal = await self._run([Limit(name, per_minute, cost)], False)
        return refusal.wait_s if refusal else None

    def adjust_queued(self, pipe, name: str, *, per_minute: int, delta: int) -> bool:
        limits = [Limit(name, per_minute, delta)]
        return self._shared.queue(pipe, _GCRA, keys=[self._prefix + name],
                                  args=_gcra_args(limits, True))

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        await self._run([Limit(name, per_minute, delta)], True)


def _gcra_args(limits: Sequence[Limit], force: bool) -> list[object]:
    args: list[object] = [int(force)]
    for limit in limits:
        args += [PERIOD_MS / limit.per_minute, limit.cost]
    return args
