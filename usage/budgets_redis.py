"""Budget reservations in Redis, when REDIS_URL is set: one Lua script per request instead of a
database transaction, exact across workers and replicas.

Each (scope, id, period) has a Redis hash {s: spent units, r: reserved units}, seeded from the
database counter's spend the first time it is needed (and again after a week unused, or after a
Redis restart). `reserve` checks `s + r + amount <= limit` for every scope and reserves in all of
them or none, atomically; `settle` turns the reservation into spend. The database stays the
record: the ledger batch adds each row's cost to its counters' `spent_units` (see
usage.services), so counters still equal the ledger; Redis only answers "is there room?".

A reservation whose request never settles (a crashed worker) is reaped by the next `reserve`
after RESERVATION_TTL. While Redis is unreachable (`gateway.shared_state`) the caller falls back
to reserving in the database (usage.budgets); the two do not see each other's reservations
during that window, but both see all settled spend. The scripts are in `lua/budget_*.lua`;
standalone Redis only (they touch keys named in their data).
"""
from __future__ import annotations

import logging
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
IDLE_TTL_S = 7 * 86400
REAP_PER_CALL = 20

_RESERVE = LuaScript.beside(__file__, "budget_reserve.lua")
_SETTLE = LuaScript.beside(__file__, "budget_settle.lua")
_SEED = LuaScript.beside(__file__, "budget_seed.lua")


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
    caller then reserves in the database)."""

    def __init__(self, redis: aioredis.Redis, *, retry_interval_s: float = 1.0) -> None:
        self._shared = SharedState(redis, name="budgets",
                                   fallback="reservations are made in the database",
                                   logger=logger, retry_interval_s=retry_interval_s)

    async def reserve(self, *, request_id: str, limits: list[BudgetLimit], amount_units: int,
                      now: datetime, spent_units) -> bool:
        """Reserve `amount_units` against every limit, or none. `spent_units(limit, now)` is an
        async callable giving the database's spend of a counter not yet in Redis. Returns True
        when reserved, False when Redis is unreachable. Raises BudgetExceeded."""
        async def shared() -> bool:
            client = self._shared.redis
            keys = [counter_key(limit, now) for limit in limits]
            args: list[object] = [request_id, amount_units, int(now.timestamp() * 1000),
                                  int(RESERVATION_TTL / timedelta(milliseconds=1)), REAP_PER_CALL]
            for limit in limits:
                args += [usd_to_units(limit.limit_usd), _key_ttl_s(limit, now)]
            # A counter Redis has not seen is seeded from the database, then the reservation
            # is tried again (a second counter may need seeding too).
            for _ in range(3):
                result = await _RESERVE(client, keys=[RESERVATIONS, RESERVATION_EXPIRY, *keys],
                                        args=args)
                outcome = int(result[0])
                if outcome == 1:
                    return True
                limit = limits[int(result[1]) - 1]
                if outcome == 0:
                    raise BudgetExceeded(
                        f"the {limit.scope}'s {limit.period} budget of ${limit.limit_usd} is "
                        "exhausted", headers={"retry-after": retry_after(limit.period, now)})
                spent = await spent_units(limit, now)
                await _SEED(client, keys=[keys[int(result[1]) - 1]],
                            args=[spent, _key_ttl_s(limit, now)])
            return False

        async def in_the_database() -> bool:
            return False

        return await self._shared.run(shared, in_the_database)

    async def settle(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                     cost_units: int) -> None:
        """Release the reservation and add the spend. Tried even while Redis is considered
        down (the reservation was made there). Never raises for Redis trouble: the reservation
        is then reaped after its TTL, and the database records the spend anyway."""
        keys = [RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)]

        async def shared() -> None:
            await _SETTLE(self._shared.redis, keys=keys, args=[request_id, cost_units])

        async def reaped_later() -> None:
            """The reservation expires in Redis; the database has the spend."""

        await self._shared.run(shared, reaped_later, force=True)

    def settle_queued(self, pipe, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int) -> bool:
        """Queue `settle` on a Redis pipeline the caller runs with
        `gateway.shared_state.pipeline_execute` (redo: `settle`, for a NOSCRIPT answer); False
        while Redis is considered down (then call `settle`)."""
        keys = [RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)]
        return self._shared.queue(pipe, _SETTLE, keys=keys, args=[request_id, cost_units])
