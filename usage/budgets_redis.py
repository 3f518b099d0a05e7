"""Budget reservations in Redis, when REDIS_URL is set: one Lua script per request instead of a
database transaction, exact across workers and replicas.

Each (scope, id, period) has a Redis hash {s: spent units, r: units reserved in Redis, d: units
reserved in the database, t: when d was read}, seeded from the database counter the first time
it is needed (and again after a week unused, or after a Redis restart). `reserve` checks
`s + r + d + amount <= limit` for every scope and reserves in all of them or none, atomically;
`settle` turns the reservation into spend. The database stays the record: the ledger batch adds
each row's cost to its counters' `spent_units` (see usage.services), so counters still equal
the ledger; Redis only answers "is there room?".

The Redis copy is never behind the database (`lua/budget_sync.lua`): a sync sets `s` to the
larger of Redis's spend and the database's and `d` to the database's reservations.
- While Redis is unreachable (`gateway.shared_state`) the caller reserves in the database
  (usage.budgets), and settles there. This process notes the counters it reserved there, and the
  Redis reservations whose settlement did not reach Redis; when Redis answers again, before its
  first shared call, it settles the latter in Redis and syncs the former.
- While `d` is not 0 (reservations made in the database, by any process, not settled yet),
  `reserve` syncs the counter again once per SYNC_INTERVAL, so those settle into Redis's view.
- Redis holds an epoch (a random id, set when missing: on first use and after Redis restarted
  empty). Each process keeps the reservations it holds in Redis until they settle; a process
  whose epoch is not Redis's holds them again there (`lua/budget_restore.lua`) before its next
  reservation, so a restart does not free the room of requests still in flight.

A reservation whose request never settles (a crashed worker) is reaped by the next `reserve`
after RESERVATION_TTL. The scripts are in `lua/budget_*.lua`; standalone Redis only (they touch
keys named in their data).

What is still open: spend settled in Redis in the moments before a restart and not yet
committed to the database, and the in-flight reservations of a process that has not reserved
since the restart, are not counted until they settle.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from gateway.errors import BudgetExceeded
from gateway.shared_state import LuaScript, SharedState
from usage.budgets import RESERVATION_TTL, BudgetLimit, period_bounds, retry_after, usd_to_units

logger = logging.getLogger(__name__)

PREFIX = "gw:budget:"
RESERVATIONS = "gw:budget-res"          # hash: request id -> "amount key key ..."
RESERVATION_EXPIRY = "gw:budget-res:exp"  # sorted set: request id by expiry (ms)
EPOCH = "gw:budget-epoch"               # string: the id of this Redis dataset
# The intents of admitted requests (usage.intents), written by a reservation in its round trip.
INTENTS = "gw:intent"                   # hash: request id -> encoded intent
INTENT_EXPIRY = "gw:intent:exp"         # sorted set: request id by lease expiry (ms)
IDLE_TTL_S = 7 * 86400
REAP_PER_CALL = 20
SYNC_INTERVAL = timedelta(seconds=1)
# What one process remembers for write-back at most (bounded memory in a long outage; beyond
# it, the oldest is forgotten and left to the reservation TTL and the next sync).
MAX_REMEMBERED = 100_000

_RESERVE = LuaScript.beside(__file__, "budget_reserve.lua")
_SETTLE = LuaScript.beside(__file__, "budget_settle.lua")
_SYNC = LuaScript.beside(__file__, "budget_sync.lua")
_RESTORE = LuaScript.beside(__file__, "budget_restore.lua")

# The database's figures of a counter: (spent, reserved) units, or spent alone.
CounterUnits = Callable[[BudgetLimit, datetime], Awaitable["tuple[int, int] | int"]]


def counter_key(limit: BudgetLimit, now: datetime) -> str:
    start, _ = period_bounds(limit.period, now)
    return period_key(scope=limit.scope, scope_id=limit.scope_id, period=limit.period,
                      period_start=start)


def period_key(*, scope: str, scope_id: int, period: str, period_start: datetime) -> str:
    return f"{PREFIX}{scope}:{scope_id}:{period}:{int(period_start.timestamp())}"


def shared_spend_forget(*, scope: str, scope_id: int, period: str, period_start: datetime) -> None:
    """Drop the Redis copy of a database counter that reconciliation corrected, so the next
    request seeds it again from the corrected figure. A no-op without Redis or while it is
    down (the copy then lives until it has been unused for a week)."""
    if not settings.REDIS_URL:
        return
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.delete(period_key(scope=scope, scope_id=scope_id, period=period,
                                 period_start=period_start))
    except (RedisError, OSError) as exc:
        logger.warning("budgets: Redis copy of a corrected counter not dropped (%s)",
                       type(exc).__name__)
    finally:
        client.close()


def _key_ttl_s(limit: BudgetLimit, now: datetime) -> int:
    _, end = period_bounds(limit.period, now)
    if end is None:
        return IDLE_TTL_S
    return int((end - now).total_seconds()) + 86400


class RedisBudgets:
    """Reserve/settle through Redis; `reserve` returns False while Redis is unreachable (the
    caller then reserves in the database). One instance per event loop, like its client."""

    def __init__(self, redis: aioredis.Redis, *, retry_interval_s: float = 1.0) -> None:
        self._shared = SharedState(redis, name="budgets",
                                   fallback="reservations are made in the database",
                                   logger=logger, retry_interval_s=retry_interval_s,
                                   on_recover=self._recover)
        self._epoch = ""
        self._units: CounterUnits | None = None
        # request id -> (limits, when it started, amount, expiry ms): held in Redis, unsettled.
        self._held: dict[str, tuple[list[BudgetLimit], datetime, int, int]] = {}
        # request id -> (limits, when it started, cost): settled while Redis was unreachable.
        self._unsettled: dict[str, tuple[list[BudgetLimit], datetime, int]] = {}
        # counter key -> (limit, a time in its period): reserved in the database meanwhile.
        self._dirty: dict[str, tuple[BudgetLimit, datetime]] = {}

    async def reserve(self, *, request_id: str, limits: list[BudgetLimit], amount_units: int,
                      now: datetime, spent_units: CounterUnits,
                      intent: tuple[str, int] | None = None) -> bool:
        """Reserve `amount_units` against every limit, or none. `spent_units(limit, now)` is an
        async callable giving the database's (spent, reserved) units of a counter (an int: spent
        alone). `intent` (encoded, lease expiry ms) is the request's intent (usage.intents),
        written with the reservation by the same script. Returns True when reserved (and the
        intent written), False when Redis is unreachable. Raises BudgetExceeded."""
        self._units = spent_units
        now_ms = int(now.timestamp() * 1000)
        expiry_ms = now_ms + int(RESERVATION_TTL / timedelta(milliseconds=1))

        tried = False

        async def shared() -> bool:
            nonlocal tried
            tried = True
            client = self._shared.redis
            keys = [counter_key(limit, now) for limit in limits]
            args: list[object] = [request_id, amount_units, now_ms,
                                  int(RESERVATION_TTL / timedelta(milliseconds=1)), REAP_PER_CALL,
                                  self._epoch, int(SYNC_INTERVAL / timedelta(milliseconds=1)),
                                  *(intent or ("", 0))]
            for limit in limits:
                args += [usd_to_units(limit.limit_usd), _key_ttl_s(limit, now)]
            # A counter Redis has not seen, or whose database reservations are due to be read
            # again, is synced from the database, then the reservation is tried again (another
            # counter may need it too); a new epoch first restores this process's reservations.
            for _ in range(2 * len(limits) + 3):
                args[5] = self._epoch
                result = await _RESERVE(client, keys=[RESERVATIONS, RESERVATION_EXPIRY, EPOCH,
                                                      INTENTS, INTENT_EXPIRY, *keys], args=args)
                outcome = int(result[0])
                if outcome == 1:
                    self._epoch = _text(result[1])
                    self._remember(self._held, request_id, (limits, now, amount_units, expiry_ms))
                    return True
                if outcome == -2:
                    await client.set(EPOCH, uuid.uuid4().hex, nx=True)
                    continue
                if outcome == -3:
                    await self._restore_held()
                    self._epoch = _text(result[1])
                    continue
                limit = limits[int(result[1]) - 1]
                if outcome == 0:
                    raise BudgetExceeded(
                        f"the {limit.scope}'s {limit.period} budget of ${limit.limit_usd} is "
                        "exhausted", headers={"retry-after": retry_after(limit.period, now)})
                await self._sync(limit, now)
            return False

        async def in_the_database() -> bool:
            for limit in limits:
                self._remember(self._dirty, counter_key(limit, now), (limit, now))
            if tried:
                # The script may have run after all (a paused Redis executes what it had
                # received when it resumes): release it there once Redis answers.
                self._remember(self._unsettled, request_id, (limits, now, 0))
            return False

        return await self._shared.run(shared, in_the_database)

    def held_units(self, *, limits: list[BudgetLimit], now: datetime) -> list[int]:
        """What this process holds reserved in Redis against each of `limits`' counters at
        `now`, for a reservation made in the database while Redis is unreachable (its copy of
        them may be lost, and the database does not see them)."""
        wanted = [counter_key(limit, now) for limit in limits]
        held = [0] * len(limits)
        for held_limits, at, amount, _ in self._held.values():
            keys = {counter_key(limit, at) for limit in held_limits}
            for i, key in enumerate(wanted):
                if key in keys:
                    held[i] += amount
        return held

    async def settle(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                     cost_units: int) -> None:
        """Release the reservation and add the spend. Tried even while Redis is considered
        down (the reservation was made there). Never raises for Redis trouble: the settlement
        is then made in Redis when it answers again (the database records the spend anyway)."""
        keys = [RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)]
        self._held.pop(request_id, None)

        async def shared() -> None:
            await _SETTLE(self._shared.redis, keys=keys, args=[request_id, cost_units])

        async def when_redis_answers() -> None:
            self._remember(self._unsettled, request_id, (limits, at, cost_units))

        await self._shared.run(shared, when_redis_answers, force=True)

    def settle_queued(self, pipe, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int) -> bool:
        """Queue `settle` on a Redis pipeline the caller runs with
        `gateway.shared_state.pipeline_execute` (redo: `settle`, for a NOSCRIPT answer); False
        while Redis is considered down (then call `settle`)."""
        keys = [RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)]
        queued = self._shared.queue(pipe, _SETTLE, keys=keys, args=[request_id, cost_units])
        if queued:
            self._held.pop(request_id, None)
        return queued

    def settle_missed(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int, error: BaseException) -> None:
        """A queued `settle` whose pipeline failed with `error` (one of REDIS_UNREACHABLE):
        Redis counts as unreachable, and the settlement is made there when it answers again,
        instead of the reservation waiting for its TTL."""
        self._shared.failed(error)
        self._remember(self._unsettled, request_id, (limits, at, cost_units))

    async def _sync(self, limit: BudgetLimit, at: datetime) -> None:
        """Bring one counter's Redis copy up to the database (lua/budget_sync.lua)."""
        if self._units is None:
            return
        units = await self._units(limit, at)
        spent, reserved = units if isinstance(units, tuple) else (units, 0)
        await _SYNC(self._shared.redis, keys=[counter_key(limit, at)],
                    args=[spent, reserved, int(time.time() * 1000), _key_ttl_s(limit, at)])

    async def _restore_held(self) -> None:
        """Hold again in Redis the reservations of this process it lost (a restart)."""
        now_ms = int(time.time() * 1000)
        for request_id, (_, _, _, expiry_ms) in list(self._held.items()):
            if expiry_ms <= now_ms:
                self._held.pop(request_id, None)
        counters = {counter_key(limit, at): (limit, at)
                    for limits, at, _, _ in self._held.values() for limit in limits}
        for limit, at in counters.values():
            await self._sync(limit, at)
        for request_id, (limits, at, amount, expiry_ms) in list(self._held.items()):
            await _RESTORE(self._shared.redis,
                           keys=[RESERVATIONS, RESERVATION_EXPIRY,
                                 *(counter_key(limit, at) for limit in limits)],
                           args=[request_id, amount, expiry_ms])

    async def _recover(self) -> None:
        """Redis answers again: settle there what was settled meanwhile (and release what was
        reserved there by a call that timed out), then sync the counters reserved in the
        database meanwhile. Raises one of REDIS_UNREACHABLE when Redis is still
        down (what is left is tried again next time)."""
        for request_id, (limits, at, cost) in list(self._unsettled.items()):
            await _SETTLE(self._shared.redis,
                          keys=[RESERVATIONS, RESERVATION_EXPIRY,
                                *(counter_key(limit, at) for limit in limits)],
                          args=[request_id, cost, 1])
            del self._unsettled[request_id]
        for key, (limit, at) in list(self._dirty.items()):
            await self._sync(limit, at)
            del self._dirty[key]

    @staticmethod
    def _remember(into: dict, key: str, value) -> None:
        if len(into) >= MAX_REMEMBERED:
            del into[next(iter(into))]
        into[key] = value


def reservation_settle_if_held(client: redis.Redis, *, request_id: str,
                               limits: list[BudgetLimit], at: datetime, cost_units: int,
                               pipe=None) -> None:
    """Settle a reservation from outside its request (the reaper of a crashed process's
    requests, usage.intents), with a synchronous client: only if Redis still holds it, so a
    second reaper, or the request's own settlement, is never counted twice. Queued on `pipe`
    when given (a pipeline of `client`). Raises RedisError."""
    script = client.register_script(_SETTLE.source)
    script(keys=[RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)],
           args=[request_id, cost_units, 1], client=pipe if pipe is not None else client)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
