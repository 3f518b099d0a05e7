"""Budget reservations in Redis, when REDIS_URL is set: one Lua script per request instead of a
database transaction, exact across workers and replicas.

Each (scope, id, period) has a Redis hash {s: spent units, r: reserved units}, seeded from the
database counter's spend the first time it is needed (and again after a week unused, or after a
Redis restart). `reserve` checks `s + r + amount <= limit` for every scope and reserves in all of
them or none, atomically; `settle` turns the reservation into spend. The database stays the
record: the ledger batch adds each row's cost to its counters' `spent_units` (see
usage.services), so counters still equal the ledger; Redis only answers "is there room?".

A reservation whose request never settles (a crashed worker) is reaped by the next `reserve`
after RESERVATION_TTL. While Redis is unreachable the caller falls back to reserving in the
database (usage.budgets); the two do not see each other's reservations during that window, but
both see all settled spend. Standalone Redis (the scripts touch keys named in their data).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from gateway.errors import BudgetExceeded
from gateway.routing_state import reraise_swallowed_cancel
from usage.budgets import RESERVATION_TTL, BudgetLimit, period_bounds, retry_after, usd_to_units

logger = logging.getLogger(__name__)

PREFIX = "gw:budget:"
RESERVATIONS = "gw:budget-res"          # hash: request id -> "amount key key ..."
RESERVATION_EXPIRY = "gw:budget-res:exp"  # sorted set: request id by expiry (ms)
IDLE_TTL_S = 7 * 86400
REAP_PER_CALL = 20

# KEYS: RESERVATIONS, RESERVATION_EXPIRY, counter keys... ARGV: request id, amount, now ms,
# reservation ttl ms, then per counter key: limit units, key ttl s.
# Returns {1} reserved, {0, i} no room in counter i, {-1, i} counter i not seeded.
_RESERVE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, %d)
for _, id in ipairs(expired) do
  local data = redis.call('HGET', KEYS[1], id)
  if data then
    local held = nil
    for word in string.gmatch(data, '%%S+') do
      if held == nil then held = tonumber(word)
      elseif redis.call('EXISTS', word) == 1 then
        if redis.call('HINCRBY', word, 'r', -held) < 0 then redis.call('HSET', word, 'r', 0) end
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local amount = tonumber(ARGV[2])
for i = 3, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 's', 'r')
  if not row[1] then return {-1, i - 2} end
  local limit = tonumber(ARGV[5 + (i - 3) * 2])
  if tonumber(row[1]) + tonumber(row[2] or 0) + amount > limit then return {0, i - 2} end
end
local data = ARGV[2]
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', amount)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[6 + (i - 3) * 2]))
  data = data .. ' ' .. KEYS[i]
end
redis.call('HSET', KEYS[1], ARGV[1], data)
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
return {1}
""" % REAP_PER_CALL

# KEYS: RESERVATIONS, RESERVATION_EXPIRY, counter keys... ARGV: request id, cost units.
# A reaped (expired) reservation holds nothing any more; only the spend is added.
_SETTLE = """
local data = redis.call('HGET', KEYS[1], ARGV[1])
local held = 0
if data then held = tonumber(string.match(data, '^%S+')) end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    -- never below 0: a copy re-seeded meanwhile does not hold this reservation
    if redis.call('HINCRBY', KEYS[i], 'r', -held) < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
    redis.call('HINCRBY', KEYS[i], 's', tonumber(ARGV[2]))
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return held
"""

# KEYS[1]: a counter key. ARGV: spent units from the database, key ttl s.
_SEED = """
if redis.call('HSETNX', KEYS[1], 's', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'r', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
"""


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
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._seed = redis.register_script(_SEED)
        self._down_until = 0.0
        self._retry_interval_s = retry_interval_s

    async def reserve(self, *, request_id: str, limits: list[BudgetLimit], amount_units: int,
                      now: datetime, spent_units) -> bool:
        """Reserve `amount_units` against every limit, or none. `spent_units(limit, now)` is an
        async callable giving the database's spend of a counter not yet in Redis. Returns True
        when reserved, False when Redis is unreachable. Raises BudgetExceeded."""
        if time.monotonic() < self._down_until:
            return False
        keys = [counter_key(limit, now) for limit in limits]
        args: list[object] = [request_id, amount_units, int(now.timestamp() * 1000),
                              int(RESERVATION_TTL / timedelta(milliseconds=1))]
        for limit in limits:
            args += [usd_to_units(limit.limit_usd), _key_ttl_s(limit, now)]
        try:
            for _ in range(3):
                result = await self._reserve(keys=[RESERVATIONS, RESERVATION_EXPIRY, *keys], args=args)
                reraise_swallowed_cancel()
                outcome = int(result[0])
                if outcome == 1:
                    return True
                limit = limits[int(result[1]) - 1]
                if outcome == 0:
                    raise BudgetExceeded(
                        f"the {limit.scope}'s {limit.period} budget of ${limit.limit_usd} is exhausted",
                        headers={"retry-after": retry_after(limit.period, now)})
                spent = await spent_units(limit, now)
                await self._seed(keys=[keys[int(result[1]) - 1]], args=[spent, _key_ttl_s(limit, now)])
                reraise_swallowed_cancel()
        except (RedisError, OSError) as exc:
            reraise_swallowed_cancel()
            self._mark_down(exc)
        return False

    async def settle(self, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                     cost_units: int) -> None:
        """Release the reservation and add the spend. Never raises for Redis trouble: the
        reservation is then reaped after its TTL, and the database records the spend anyway."""
        keys = [counter_key(limit, at) for limit in limits]
        try:
            await self._settle(keys=[RESERVATIONS, RESERVATION_EXPIRY, *keys],
                               args=[request_id, cost_units])
            reraise_swallowed_cancel()
        except (RedisError, OSError) as exc:
            reraise_swallowed_cancel()
            self._mark_down(exc)

    def settle_queued(self, pipe, *, request_id: str, limits: list[BudgetLimit], at: datetime,
                      cost_units: int) -> bool:
        """Queue `settle` on a Redis pipeline the caller executes (its answer is a NoScriptError
        when Redis has not loaded the script: then call `settle`); False while Redis is
        considered down (then call `settle`)."""
        if time.monotonic() < self._down_until:
            return False
        keys = [RESERVATIONS, RESERVATION_EXPIRY, *(counter_key(limit, at) for limit in limits)]
        pipe.evalsha(self._settle.sha, len(keys), *keys, request_id, cost_units)
        return True

    def _mark_down(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            logger.warning("budgets: Redis unreachable (%s); reserving in the database",
                           type(exc).__name__)
        self._down_until = time.monotonic() + self._retry_interval_s
