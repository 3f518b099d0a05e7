"""Routing state: WRR positions, circuit breakers and in-flight counts, per process or shared.

`RoutingState` is what the proxy talks to. `LocalRoutingState` keeps everything in this process;
`RedisRoutingState` keeps it in Redis so every worker and replica shares one WRR sequence, one
breaker per route and one in-flight count per provider. The decisions themselves are the pure
functions of `gateway.routing`; the Lua scripts in `gateway/lua/` mirror `smooth_wrr_pick` and
`breaker_transition` so that each read-modify-write happens atomically inside Redis.

A request's life: `plan()` once (raises nothing; an empty plan says why), then for each route in
order, at most `routing.MAX_ATTEMPTS` of them, `acquire()` (None: provider at `max_inflight`,
try the next), call the upstream, `record_success()` or `record_failure()`, and `release()` in
a `finally`.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.cancellation import reraise_swallowed_cancel  # noqa: F401  (re-exported)
from gateway.routing import (  # Lease: re-exported
    BreakerEvent, BreakerState, Candidate, Circuit, Lease, Level, Plan, breaker_transition,
    exhausted_plan, failover_order, route_levels, smooth_wrr_pick,
)
from gateway.redis_client import AsyncClient
from gateway.shared_state import LuaScript, SharedState, pipeline_execute

logger = logging.getLogger(__name__)

# Lease tokens: unique across processes (a random prefix per process) without a system call
# per request (uuid4 reads the kernel's random source each time).
_token_prefix = uuid.uuid4().hex[:16]
_token_serial = itertools.count()


def _new_token_prefix() -> None:  # a forked worker (gunicorn) must not share its parent's
    global _token_prefix
    _token_prefix = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_token_prefix)


def _lease_token() -> str:
    return f"{_token_prefix}{next(_token_serial):x}"


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A route's circuit and its provider's in-flight count, for /health/detailed."""
    route_id: int
    provider_id: int
    state: str
    consecutive_failures: int
    last_error_class: str | None
    last_error_at: float | None
    opened_until: float | None
    cooldown_s: float
    in_flight: int
    max_inflight: int | None
    shared: bool


class RoutingState(Protocol):
    async def plan(self, model: str, candidates: Sequence[Candidate], *, now: float) -> Plan:
        """The failover order for one request (see `gateway.routing.Plan`).

        Advances the WRR position of every level in the plan once. A route whose cool-down has
        ended is included, first, only for the single caller that wins its half-open probe.
        """
        ...

    async def acquire(self, candidate: Candidate) -> Lease | None:
        """Take an in-flight slot on the candidate's provider; None when it is at its cap."""
        ...

    def release_queued(self, pipe, lease: Lease) -> bool:
        """Queue the release on a Redis pipeline the caller runs with
        `gateway.shared_state.pipeline_execute`; False when this lease must be given back with
        `release` instead."""

    async def release(self, lease: Lease) -> None:
        """Give the slot back; releasing twice is harmless."""
        ...

    async def record_success(self, candidate: Candidate) -> None:
        """The upstream answered without a retryable failure: reset or close the breaker."""
        ...

    async def record_failure(self, candidate: Candidate, error_class: str, *, now: float) -> None:
        """A failure that counts against this route's circuit: count it."""
        ...

    async def snapshot(self, candidates: Sequence[Candidate]) -> dict[int, BreakerView]:
        """Each candidate's breaker and in-flight count, keyed by route_id."""
        ...


async def _plan(candidates: Sequence[Candidate], *, now: float,
                read_breakers: Callable[[Sequence[Candidate]], Awaitable[dict[int, BreakerState]]],
                claim_probe: Callable[[Candidate], Awaitable[bool]],
                step_wrr: Callable[[Sequence[Level]], Awaitable[tuple[dict[int, int],
                                                                      dict[int, int]]]],
                ) -> Plan:
    """The planning procedure both stores share; they differ only in the three primitives.

    Probes are claimed only in the first level that can take the request at all, and at most
    one per request: a recovering route is tested by traffic that would really be sent to it.
    """
    breakers = await read_breakers(candidates)
    levels = route_levels(candidates, breakers=breakers, now=now)
    probe = None
    for level in levels:
        for c in level.probe_ready:
            if await claim_probe(c):
                probe = c
                break
        if probe is not None or level.passing:
            break
    serving = [level for level in levels if level.passing]
    chosen, weights = await step_wrr(serving) if serving else ({}, {})
    routes = failover_order(levels, probe=probe, chosen=chosen, weights=weights)
    if not routes:
        return exhausted_plan(candidates, breakers=breakers, now=now)
    return Plan(routes=routes, probe=probe.route_id if probe else None)


class LocalRoutingState:
    """Routing state for this process only, in memory.

    Memory is bounded by the configuration: one breaker per route, one WRR vector per (model,
    priority), in-flight tokens per provider up to its cap. Methods never suspend while holding
    state, and a threading lock guards it, so concurrent tasks (and threads) see atomic updates.
    Leases expire after `lease_ttl_s` so a holder that never releases cannot leak a slot.
    """

    def __init__(self, *, lease_ttl_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[int, BreakerState] = {}
        self._wrr: dict[tuple[str, int], tuple[str, dict[int, int]]] = {}
        self._inflight: dict[int, dict[str, float]] = {}

    async def plan(self, model: str, candidates: Sequence[Candidate], *, now: float) -> Plan:
        async def read_breakers(cs: Sequence[Candidate]) -> dict[int, BreakerState]:
            with self._lock:
                return {c.route_id: self._breakers[c.route_id]
                        for c in cs if c.route_id in self._breakers}

        async def claim_probe(c: Candidate) -> bool:
            with self._lock:
                state = self._breakers.get(c.route_id, BreakerState())
                new = breaker_transition(state, BreakerEvent.PROBE, now=now, config=c.breaker)
                if new is state:
                    return False
                self._breakers[c.route_id] = new
                return True

        async def step_wrr(levels: Sequence[Level]) -> tuple[dict[int, int], dict[int, int]]:
            chosen: dict[int, int] = {}
            weights: dict[int, int] = {}
            with self._lock:
                for level in levels:
                    key = (model, level.priority)
                    digest, current = self._wrr.get(key, ("", {}))
                    if digest != level.digest:
                        current = {}
                    pick, current = smooth_wrr_pick(level.passing, current)
                    self._wrr[key] = (level.digest, current)
                    chosen[level.priority] = pick.route_id
                    weights.update(current)
            return chosen, weights

        return await _plan(candidates, now=now, read_breakers=read_breakers,
                           claim_probe=claim_probe, step_wrr=step_wrr)

    async def acquire(self, candidate: Candidate) -> Lease | None:
        now = self._clock()
        with self._lock:
            held = self._inflight.setdefault(candidate.provider_id, {})
            for token in [t for t, expiry in held.items() if expiry <= now]:
                del held[token]
            if candidate.max_inflight is not None and len(held) >= candidate.max_inflight:
                return None
            token = _lease_token()
            held[token] = now + self._lease_ttl_s
        return Lease(provider_id=candidate.provider_id, route_id=candidate.route_id, token=token,
                     shared=False)

    def release_queued(self, pipe, lease: Lease) -> bool:
        return False

    async def release(self, lease: Lease) -> None:
        with self._lock:
            self._inflight.get(lease.provider_id, {}).pop(lease.token, None)

    async def record_success(self, candidate: Candidate) -> None:
        self._record(candidate, BreakerEvent.SUCCESS, now=0.0, error_class=None)

    async def record_failure(self, candidate: Candidate, error_class: str, *, now: float) -> None:
        self._record(candidate, BreakerEvent.FAILURE, now=now, error_class=error_class)

    def _record(self, candidate: Candidate, event: BreakerEvent, *, now: float,
                error_class: str | None) -> None:
        with self._lock:
            state = self._breakers.get(candidate.route_id, BreakerState())
            self._breakers[candidate.route_id] = breaker_transition(
                state, event, now=now, config=candidate.breaker, error_class=error_class)

    def breakers_adopt(self, states: dict[int, BreakerState | None]) -> None:
        """Take these breakers as this process's own (None: closed and clean), the view a
        shared store last read, so they still hold when this process serves on its own."""
        with self._lock:
            for route_id, state in states.items():
                if state is None:
                    self._breakers.pop(route_id, None)
                else:
                    self._breakers[route_id] = state

    def breakers_learnt(self) -> dict[int, BreakerState]:
        """Every breaker that is not closed and clean, by route id."""
        with self._lock:
            return {route_id: state for route_id, state in self._breakers.items()
                    if state.status is not Circuit.CLOSED or state.failures}

    async def snapshot(self, candidates: Sequence[Candidate]) -> dict[int, BreakerView]:
        now = self._clock()
        with self._lock:
            breakers = {c.route_id: self._breakers.get(c.route_id, BreakerState())
                        for c in candidates}
            in_flight = {p: sum(e > now for e in self._inflight.get(p, {}).values())
                         for p in {c.provider_id for c in candidates}}
        return {c.route_id: _view(c, breakers[c.route_id], in_flight[c.provider_id], shared=False)
                for c in candidates}


_WRR_STEP = LuaScript.beside(__file__, "wrr_step.lua")
_BREAKER_PROBE = LuaScript.beside(__file__, "breaker_probe.lua")
_BREAKER_FAILURE = LuaScript.beside(__file__, "breaker_failure.lua")
_BREAKER_SUCCESS = LuaScript.beside(__file__, "breaker_success.lua")
_INFLIGHT_ACQUIRE = LuaScript.beside(__file__, "inflight_acquire.lua")
_INFLIGHT_COUNT = LuaScript.beside(__file__, "inflight_count.lua")
_BREAKER_RESTORE = LuaScript.beside(__file__, "breaker_restore.lua")


class RedisRoutingState:
    """Routing state shared through Redis by every worker and replica.

    Each update is one atomic Lua script (or a single command); every key carries a TTL, so
    state of deleted routes and slots of crashed workers expire (leases after `lease_ttl_s`,
    breaker and WRR state `state_ttl_s` after their last change). Keys, under `prefix`:
    `cb:<route_id>` (hash), `inflight:<provider_id>` (zset), `wrr:{<model>}:<priority>:<digest>`
    (hash). On a Redis Cluster: a breaker (one per deployment) and an in-flight set (one per
    provider) are each touched alone, by single-key scripts, so they need no hash tag and
    spread over the slots; one plan steps every priority level of a model in one script, so
    the braces keep one model's levels in one slot. Reads of several breakers are pipelined,
    which a cluster client sends to each node in parallel.

    While Redis is unreachable (`gateway.shared_state`; tried again after `retry_interval_s`)
    a per-process `LocalRoutingState` serves every call: each process routes, counts breakers
    and caps in-flight on its own. A lease granted by Redis and released during an outage
    simply expires there. Give the client short socket timeouts and few retries: a slow Redis
    delays the requests that wait on it.

    Breakers are re-learnt, not forgotten: the per-process store keeps the last view this
    process read from Redis (every plan reads its candidates' breakers) plus the transitions it
    recorded there, so a route that was open stays open while Redis is unreachable. When Redis
    answers again, each process writes back the breakers it holds open, half-open or counting
    failures wherever Redis has none (it restarted empty) or has them closed (they opened
    during the outage), before its first shared call; Redis's own state wins otherwise.
    """

    def __init__(self, redis: AsyncClient, *, prefix: str = "gw:", lease_ttl_s: float = 900.0,
                 state_ttl_s: float = 86400.0, retry_interval_s: float = 1.0,
                 local: LocalRoutingState | None = None) -> None:
        self._redis = redis
        self._shared = SharedState(redis, name="routing state",
                                   fallback="this process routes on its own state",
                                   logger=logger, retry_interval_s=retry_interval_s,
                                   on_recover=self._breakers_restore)
        self._prefix = prefix
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._state_ttl_ms = int(state_ttl_s * 1000)
        self._local = local or LocalRoutingState(lease_ttl_s=lease_ttl_s)
        # Routes whose breaker this process last read as closed with no failures: a success
        # there changes nothing, so it skips the round trip (bounded by the configured routes).
        self._clean: set[int] = set()

    @property
    def degraded(self) -> bool:
        """True while Redis is considered down and the per-process fallback is in use."""
        return self._shared.degraded

    async def plan(self, model: str, candidates: Sequence[Candidate], *, now: float) -> Plan:
        async def claim_probe(c: Candidate) -> bool:
            won = await _BREAKER_PROBE(
                self._redis, keys=[self._breaker_key(c.route_id)],
                args=[repr(now), repr(c.probe_timeout_s), self._state_ttl_ms])
            return bool(won)

        async def step_wrr(levels: Sequence[Level]) -> tuple[dict[int, int], dict[int, int]]:
            if all(len(level.passing) == 1 for level in levels):
                # A lone route is its level's pick and its current weight stays 0: no state.
                return ({level.priority: level.passing[0].route_id for level in levels},
                        {level.passing[0].route_id: 0 for level in levels})
            keys = [f"{self._prefix}wrr:{{{model}}}:{lv.priority}:{lv.digest}" for lv in levels]
            args: list[int | str] = [self._state_ttl_ms]
            for level in levels:
                args.append(len(level.passing))
                for c in level.passing:
                    args += [c.route_id, c.weight]
            out = await _WRR_STEP(self._redis, keys=keys, args=args)
            values = iter(int(v) for v in out)
            chosen: dict[int, int] = {}
            weights: dict[int, int] = {}
            for level in levels:
                chosen[level.priority] = next(values)
                weights.update((c.route_id, next(values)) for c in level.passing)
            return chosen, weights

        async def shared() -> Plan:
            lease: Lease | None = None

            async def read_breakers(cs: Sequence[Candidate]) -> dict[int, BreakerState]:
                # A model with one route: its in-flight slot is taken in the same round trip
                # as its breaker is read; given back below if the plan does not start there.
                nonlocal lease
                breakers, lease = await self._read_breakers(
                    cs, acquire=cs[0] if len(cs) == 1 else None)
                return breakers

            plan = await _plan(candidates, now=now, read_breakers=read_breakers,
                               claim_probe=claim_probe, step_wrr=step_wrr)
            if lease is None:
                return plan
            if plan.routes and plan.routes[0].route_id == lease.route_id:
                return replace(plan, lease=lease)
            await self.release(lease)
            return plan

        return await self._shared.run(shared, lambda: self._local.plan(model, candidates, now=now))

    async def acquire(self, candidate: Candidate) -> Lease | None:
        async def shared() -> Lease | None:
            token = _lease_token()
            granted = await _INFLIGHT_ACQUIRE(self._redis, **self._acquire_call(candidate, token))
            return self._lease(candidate, token) if granted else None

        return await self._shared.run(shared, lambda: self._local.acquire(candidate))

    def _acquire_call(self, candidate: Candidate, token: str) -> dict:
        return {"keys": [self._inflight_key(candidate.provider_id)],
                "args": [candidate.max_inflight or 0, token, self._lease_ttl_ms]}

    @staticmethod
    def _lease(candidate: Candidate, token: str) -> Lease:
        return Lease(provider_id=candidate.provider_id, route_id=candidate.route_id,
                     token=token, shared=True)

    def release_queued(self, pipe, lease: Lease) -> bool:
        if not lease.shared or self._shared.down:
            return False
        pipe.zrem(self._inflight_key(lease.provider_id), lease.token)
        return True

    async def release(self, lease: Lease) -> None:
        if not lease.shared:
            await self._local.release(lease)
            return

        async def shared() -> None:
            await self._redis.zrem(self._inflight_key(lease.provider_id), lease.token)

        async def expire_there() -> None:
            """Redis is down: the slot expires there with its lease TTL."""

        await self._shared.run(shared, expire_there)

    async def record_success(self, candidate: Candidate) -> None:
        if candidate.route_id in self._clean and not self._shared.degraded:
            return

        async def shared() -> None:
            await _BREAKER_SUCCESS(self._redis, keys=[self._breaker_key(candidate.route_id)],
                                   args=[self._state_ttl_ms])
            await self._local.record_success(candidate)

        await self._shared.run(shared, lambda: self._local.record_success(candidate))

    async def record_failure(self, candidate: Candidate, error_class: str, *, now: float) -> None:
        self._clean.discard(candidate.route_id)

        async def shared() -> None:
            await _BREAKER_FAILURE(
                self._redis, keys=[self._breaker_key(candidate.route_id)],
                args=[repr(now), error_class, candidate.failure_threshold,
                      repr(candidate.cooldown_s), repr(candidate.max_cooldown_s),
                      self._state_ttl_ms])
            await self._local.record_failure(candidate, error_class, now=now)

        await self._shared.run(
            shared, lambda: self._local.record_failure(candidate, error_class, now=now))

    async def snapshot(self, candidates: Sequence[Candidate]) -> dict[int, BreakerView]:
        async def shared() -> dict[int, BreakerView]:
            breakers, _ = await self._read_breakers(candidates)
            providers = sorted({c.provider_id for c in candidates})
            pipe = self._redis.pipeline(transaction=False)
            for provider_id in providers:
                _INFLIGHT_COUNT.queue(pipe, keys=[self._inflight_key(provider_id)])
            redo = [functools.partial(_INFLIGHT_COUNT, self._redis,
                                      keys=[self._inflight_key(provider_id)])
                    for provider_id in providers]
            counts = dict(zip(providers, await pipeline_execute(pipe, redo)))
            return {c.route_id: _view(c, breakers.get(c.route_id, BreakerState()),
                                      int(counts[c.provider_id]), shared=True)
                    for c in candidates}

        return await self._shared.run(shared, lambda: self._local.snapshot(candidates))

    async def _read_breakers(self, candidates: Sequence[Candidate], *,
                             acquire: Candidate | None = None,
                             ) -> tuple[dict[int, BreakerState], Lease | None]:
        """The candidates' breakers, and a lease on `acquire`'s provider taken in the same
        round trip (None: not asked, or at its cap)."""
        if not candidates:
            return {}, None
        pipe = self._redis.pipeline(transaction=False)
        for c in candidates:
            pipe.hgetall(self._breaker_key(c.route_id))
        redo: list = [None] * len(candidates)
        token = _lease_token() if acquire is not None else ""
        if acquire is not None:
            call = self._acquire_call(acquire, token)
            _INFLIGHT_ACQUIRE.queue(pipe, **call)
            redo.append(functools.partial(_INFLIGHT_ACQUIRE, self._redis, **call))
        rows = await pipeline_execute(pipe, redo)
        lease = None
        if acquire is not None:
            lease = self._lease(acquire, token) if rows.pop() else None
        breakers = {c.route_id: _breaker_from_hash(row) for c, row in zip(candidates, rows) if row}
        self._local.breakers_adopt({c.route_id: breakers.get(c.route_id) for c in candidates})
        for c in candidates:
            state = breakers.get(c.route_id)
            if state is None or (state.status == Circuit.CLOSED and state.failures == 0):
                self._clean.add(c.route_id)
            else:
                self._clean.discard(c.route_id)
        return breakers, lease

    async def _breakers_restore(self) -> None:
        """Write back the breakers this process holds (see the class docstring). Raises one of
        REDIS_UNREACHABLE when Redis is still down."""
        learnt = self._local.breakers_learnt()
        if not learnt:
            return
        pipe = self._redis.pipeline(transaction=False)
        redo = []
        for route_id, state in learnt.items():
            keys = [self._breaker_key(route_id)]
            args = [state.status.value, state.failures, repr(state.cooldown_s),
                    repr(state.opened_until), repr(state.probe_until), state.last_error or "",
                    "" if state.last_error_at is None else repr(state.last_error_at),
                    self._state_ttl_ms]
            _BREAKER_RESTORE.queue(pipe, keys=keys, args=args)
            redo.append(functools.partial(_BREAKER_RESTORE, self._redis, keys=keys, args=args))
        written = sum(int(w) for w in await pipeline_execute(pipe, redo))
        self._clean.difference_update(learnt)
        if written:
            logger.info("routing state: %d breaker(s) this process kept written back to Redis",
                        written)

    def _breaker_key(self, route_id: int) -> str:
        return f"{self._prefix}cb:{route_id}"

    def _inflight_key(self, provider_id: int) -> str:
        return f"{self._prefix}inflight:{provider_id}"


def _breaker_from_hash(row: dict[bytes | str, bytes | str]) -> BreakerState:
    fields = {_text(k): _text(v) for k, v in row.items()}
    last_error_at = fields.get("last_error_at")
    return BreakerState(
        status=Circuit(fields.get("state", "closed")),
        failures=int(fields.get("failures", 0)),
        cooldown_s=float(fields.get("cooldown", 0)),
        opened_until=float(fields.get("opened_until", 0)),
        probe_until=float(fields.get("probe_until", 0)),
        last_error=fields.get("last_error"),
        last_error_at=float(last_error_at) if last_error_at is not None else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _view(c: Candidate, state: BreakerState, in_flight: int, *, shared: bool) -> BreakerView:
    return BreakerView(
        route_id=c.route_id, provider_id=c.provider_id, state=state.status.value,
        consecutive_failures=state.failures, last_error_class=state.last_error,
        last_error_at=state.last_error_at,
        opened_until=state.opened_until if state.status is not Circuit.CLOSED else None,
        cooldown_s=state.cooldown_s, in_flight=in_flight, max_inflight=c.max_inflight,
        shared=shared)
