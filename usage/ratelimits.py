"""Per-key RPM and TPM limits with GCRA (a token bucket as one timestamp per key).

With Redis, one Lua script per check (`lua/gcra.lua`) makes limits exact across workers and
replicas (Redis's own clock, keys expire after a minute of silence). Without Redis each process
enforces them on its own (documented).

While Redis is unreachable (`gateway.shared_state`) each process enforces its share: the limit
divided by the replicas that were live when it last reached Redis. Replicas announce themselves
there (`lua/replicas_beat.lua`: a sorted set of ids by expiry, beaten every HEARTBEAT_S, live
for REPLICA_TTL_S). A process younger than REPLICA_TTL_S counts every STARTUP_HEARTBEAT_S
instead: a replica that started a moment before the others would otherwise count itself alone
for a whole heartbeat, and an outage then would let it admit the whole limit (seen: 1.19x over
two replicas in an empty-restart run that began within 5 s of their start). Each process also keeps, for every key it checked in Redis, the backlog
Redis answered, so its share starts as full as the shared bucket was, not as a fresh burst.
When Redis answers again, before its first shared call, each process writes its backlogs back
(`lua/gcra_seed.lua`: the later of Redis's state and the process's), so a Redis that restarted
empty continues from where the processes were. A backlog of B ms means the same fraction of
the bucket used at either scale, so over an outage n balanced replicas admit what one shared
bucket would; unbalanced, the write-back takes the fullest, which refuses early, never late.

Redis keys (Redis Cluster): a limit's name is `<kind>:<subject>` ("rpm:42", "tpm:42",
"authfail:10.0.0.1"), and its bucket is `<prefix>{<subject>}:<kind>`: the hash tag is the
subject, so the RPM and TPM of one key, which a request charges together in one script (all or
none), share a slot, and different keys' buckets spread over the cluster. Limits of different
subjects in one call are charged one subject at a time, and those charged before a refusal are
refunded (no caller combines subjects today).

A limit of N per minute allows a burst of N, refilled continuously. A request that would exceed
it is refused with the seconds until it would fit. TPM is charged the prompt estimate up
front and corrected with the real token count afterwards (`adjust`), which never refuses.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.redis_client import AsyncClient
from gateway.shared_state import LuaScript, SharedState

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000
HEARTBEAT_S = 5.0
STARTUP_HEARTBEAT_S = 0.25
REPLICA_TTL_S = 15.0
SEED_BATCH = 200

_GCRA = LuaScript.beside(__file__, "gcra.lua")
_GCRA_SEED = LuaScript.beside(__file__, "gcra_seed.lua")
_REPLICAS_BEAT = LuaScript.beside(__file__, "replicas_beat.lua")


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

    def _step(self, limits: Sequence[Limit], force: bool, *, replicas: int = 1) -> Refusal | None:
        """Charge this process's share of every limit: 1/`replicas` of it."""
        now = time.monotonic() * 1000
        with self._lock:
            if len(self._tats) >= self._max_entries:
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            new_tats = []
            for limit in limits:
                tat, wait = gcra_step(self._tats.get(limit.name, now), now,
                                      interval=PERIOD_MS * replicas / limit.per_minute,
                                      cost=limit.cost, force=force)
                if wait:
                    return Refusal(name=limit.name, wait_s=wait / 1000)
                new_tats.append(tat)
            for limit, tat in zip(limits, new_tats):
                self._tats[limit.name] = tat
        return None

    def mirror(self, backlogs: dict[str, float]) -> None:
        """Take these backlogs (ms, by counter name) as this process's state."""
        now = time.monotonic() * 1000
        with self._lock:
            if len(self._tats) >= self._max_entries:
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            for name, backlog in backlogs.items():
                self._tats[name] = now + backlog

    def backlogs(self) -> dict[str, float]:
        """Every counter with a backlog (ms), by name."""
        now = time.monotonic() * 1000
        with self._lock:
            return {name: tat - now for name, tat in self._tats.items() if tat > now}

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

    def __init__(self, redis: AsyncClient, *, prefix: str = "gw:rl:",
                 retry_interval_s: float = 1.0, heartbeat_s: float = HEARTBEAT_S,
                 replica_ttl_s: float = REPLICA_TTL_S,
                 startup_heartbeat_s: float = STARTUP_HEARTBEAT_S) -> None:
        self._shared = SharedState(redis, name="rate limits",
                                   fallback="each process enforces its share of them",
                                   logger=logger, retry_interval_s=retry_interval_s,
                                   on_recover=self._seed_from_local)
        self._prefix = prefix
        self._local = LocalRateLimiter()
        self._id = uuid.uuid4().hex
        self._heartbeat_s = heartbeat_s
        self._startup_heartbeat_s = min(heartbeat_s, startup_heartbeat_s)
        self._young_until = time.monotonic() + replica_ttl_s
        self._replica_ttl_ms = int(replica_ttl_s * 1000)
        self._next_beat = 0.0
        self._replicas = 1

    @property
    def replicas(self) -> int:
        """The live replicas this process last counted in Redis (itself included)."""
        return self._replicas

    async def _beat(self) -> None:
        if time.monotonic() < self._next_beat:
            return
        self._replicas = max(1, int(await _REPLICAS_BEAT(
            self._shared.redis, keys=[self._prefix + "replicas"],
            args=[self._id, self._replica_ttl_ms])))
        now = time.monotonic()
        self._next_beat = now + (self._startup_heartbeat_s if now < self._young_until
                                 else self._heartbeat_s)

    async def _seed_from_local(self) -> None:
        """Write this process's backlogs back to Redis (see the module docstring). Raises one of
        REDIS_UNREACHABLE when Redis is still down."""
        by_tag: dict[str, list[tuple[str, float]]] = {}
        for name, backlog in self._local.backlogs().items():
            by_tag.setdefault(_subject(name), []).append((name, backlog))
        for backlogs in by_tag.values():
            for start in range(0, len(backlogs), SEED_BATCH):
                batch = backlogs[start:start + SEED_BATCH]
                await _GCRA_SEED(self._shared.redis, keys=[self._key(name) for name, _ in batch],
                                 args=[repr(backlog) for _, backlog in batch])
        self._next_beat = 0.0

    def _key(self, name: str) -> str:
        """The bucket of the limit `name`, under the hash tag of its subject."""
        kind, _, subject = name.partition(":")
        return f"{self._prefix}{{{subject or kind}}}:{kind}"

    async def _charge(self, limits: Sequence[Limit], force: bool) -> Refusal | None:
        """One GCRA script for limits that share a subject (one slot)."""
        result = await _GCRA(self._shared.redis, keys=[self._key(limit.name) for limit in limits],
                             args=_gcra_args(limits, force))
        self._local.mirror({limit.name: float(backlog)
                            for limit, backlog in zip(limits, result[2:])})
        wait_ms = int(result[0])
        if not wait_ms:
            return None
        return Refusal(name=limits[int(result[1]) - 1].name, wait_s=wait_ms / 1000)

    async def _run(self, limits: Sequence[Limit], force: bool) -> Refusal | None:
        async def shared() -> Refusal | None:
            await self._beat()
            groups: dict[str, list[Limit]] = {}
            for limit in limits:
                groups.setdefault(_subject(limit.name), []).append(limit)
            charged: list[list[Limit]] = []
            for group in groups.values():
                refusal = await self._charge(group, force)
                if refusal is not None:
                    for done in charged:
                        await self._charge([Limit(limit.name, limit.per_minute, -limit.cost)
                                            for limit in done], True)
                    return refusal
                charged.append(group)
            return None

        async def local() -> Refusal | None:
            return self._local._step(limits, force, replicas=self._replicas)

        return await self._shared.run(shared, local)

    async def acquire_all(self, limits: Sequence[Limit]) -> Refusal | None:
        return await self._run(limits, False)

    async def acquire(self, name: str, *, per_minute: int, cost: int) -> float | None:
        refusal = await self._run([Limit(name, per_minute, cost)], False)
        return refusal.wait_s if refusal else None

    def adjust_queued(self, pipe, name: str, *, per_minute: int, delta: int) -> bool:
        limits = [Limit(name, per_minute, delta)]
        return self._shared.queue(pipe, _GCRA, keys=[self._key(name)],
                                  args=_gcra_args(limits, True))

    async def adjust(self, name: str, *, per_minute: int, delta: int) -> None:
        await self._run([Limit(name, per_minute, delta)], True)


def _subject(name: str) -> str:
    kind, _, subject = name.partition(":")
    return subject or kind


def _gcra_args(limits: Sequence[Limit], force: bool) -> list[object]:
    args: list[object] = [int(force)]
    for limit in limits:
        args += [PERIOD_MS / limit.per_minute, limit.cost]
    return args
