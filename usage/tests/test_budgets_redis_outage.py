"""Redis budget copies across a Redis outage, on a redis-server of this module's own: spend
settled in the database while Redis was paused, or lost by an empty restart, is never missing
from Redis's copy afterwards, so the budget is never overshot.

Each request is reserved and settled the way the gateway does it (gateway.admission,
gateway.finish and the ledger's settlement): in Redis when it answers, else in the database;
its reservation (the worst case) equals its cost, so any overshoot would show exactly."""
from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.errors import BudgetExceeded
from gateway.tests.redis_server import RedisServer
from usage.budgets import (
    BudgetLimit, budget_counter_units, budget_reserve, budgets_charge, budgets_settle,
    usd_to_units,
)
from usage.budgets_redis import RedisBudgets
from usage.models import BudgetCounter

COST = usd_to_units(Decimal("0.05"))


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _budgets(url: str) -> tuple[aioredis.Redis, RedisBudgets]:
    client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=0.2,
                                     socket_connect_timeout=0.2)
    return client, RedisBudgets(client, retry_interval_s=0.3)


async def _units(limit: BudgetLimit, now) -> tuple[int, int]:
    return await sync_to_async(budget_counter_units)(limit=limit, now=now)


def _settle_in_the_database(request_id: str, cost: int) -> None:
    with transaction.atomic():
        budgets_settle(charges={request_id: cost})


def _charge(limit: BudgetLimit, at, cost: int) -> None:
    with transaction.atomic():
        budgets_charge(charges=[(limit, at, cost)])


async def _reserve(budgets: RedisBudgets, limit: BudgetLimit) -> tuple[str, bool] | None:
    """Reserve COST like gateway.admission: (request id, held in Redis), or None if refused."""
    request_id, now = uuid.uuid4().hex, timezone.now()
    try:
        if await budgets.reserve(request_id=request_id, limits=[limit], amount_units=COST,
                                 now=now, spent_units=_units):
            return request_id, True
        async with budgets.database_reservation(request_id=request_id, limits=[limit], now=now,
                                                amount_units=COST) as held_elsewhere:
            await sync_to_async(budget_reserve)(
                request_id=request_id, limits=[limit], amount_units=COST, now=now,
                held_elsewhere=held_elsewhere)
    except BudgetExceeded:
        return None
    return request_id, False


async def _settle(budgets: RedisBudgets, limit: BudgetLimit, held: tuple[str, bool]) -> None:
    """Settle like gateway.finish and the ledger batch: Redis's copy and the database's."""
    request_id, shared = held
    if shared:
        at = timezone.now()
        await budgets.settle(request_id=request_id, limits=[limit], at=at, cost_units=COST)
        await sync_to_async(_charge)(limit, at, COST)
    else:
        await sync_to_async(_settle_in_the_database)(request_id, COST)


async def _requests(budgets: RedisBudgets, limit: BudgetLimit, count: int) -> int:
    """`count` requests one after another; returns how many were admitted."""
    admitted = 0
    for _ in range(count):
        held = await _reserve(budgets, limit)
        if held is not None:
            await _settle(budgets, limit, held)
            admitted += 1
    return admitted


def _spent(limit: BudgetLimit) -> int:
    return BudgetCounter.objects.get(scope=limit.scope, scope_id=limit.scope_id).spent_units


async def _until_redis_is_tried(budgets: RedisBudgets) -> None:
    for _ in range(50):
        if not budgets._shared.down:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("still inside the retry interval after 1 s")


@pytest.mark.django_db(transaction=True)
def test_spend_settled_during_a_pause_and_lost_by_a_restart_is_never_overshot(redis_server):
    limit = BudgetLimit(scope="key", scope_id=424242, limit_usd=Decimal("0.30"), period="day")

    async def scenario() -> None:
        client, budgets = _budgets(redis_server.url)
        assert await _requests(budgets, limit, 2) == 2          # in Redis
        redis_server.pause()
        try:
            assert await _requests(budgets, limit, 3) == 3      # in the database
            assert budgets._shared.degraded
        finally:
            redis_server.resume()
        await _until_redis_is_tried(budgets)
        # Redis's copy learns the database's spend before its first reservation: one more fits.
        assert await _requests(budgets, limit, 4) == 1
        assert not budgets._shared.degraded

        redis_server.kill()
        redis_server.start()
        assert await _requests(budgets, limit, 3) == 0
        await client.aclose()

    asyncio.run(scenario())
    assert _spent(limit) == usd_to_units(limit.limit_usd)


@pytest.mark.django_db(transaction=True)
def test_reservations_in_flight_across_an_empty_restart_still_hold_their_room(redis_server):
    limit = BudgetLimit(scope="team", scope_id=515151, limit_usd=Decimal("0.10"), period="total")

    async def scenario() -> None:
        client, budgets = _budgets(redis_server.url)
        first = await _reserve(budgets, limit)
        assert first is not None and first[1]
        redis_server.kill()
        redis_server.start()
        # The restart lost the first reservation. The next call finds the connection gone and
        # reserves in the database, which is told of the first; once Redis answers, the
        # process holds the first there again before its next reservation.
        second = await _reserve(budgets, limit)
        assert second is not None
        assert await _reserve(budgets, limit) is None
        await _until_redis_is_tried(budgets)
        assert await _reserve(budgets, limit) is None
        assert not budgets._shared.degraded
        await _settle(budgets, limit, first)
        await _settle(budgets, limit, second)
        assert await _reserve(budgets, limit) is None
        await client.aclose()

    asyncio.run(scenario())
    assert _spent(limit) == usd_to_units(limit.limit_usd)


@pytest.mark.django_db(transaction=True)
def test_reservations_made_in_the_database_count_in_redis_until_they_settle(redis_server):
    limit = BudgetLimit(scope="key", scope_id=616161, limit_usd=Decimal("0.10"), period="day")

    async def scenario() -> None:
        client, budgets = _budgets(redis_server.url)
        assert await _requests(budgets, limit, 1) == 1
        redis_server.pause()
        try:
            in_the_database = await _reserve(budgets, limit)
            assert in_the_database is not None and not in_the_database[1]
        finally:
            redis_server.resume()
        await _until_redis_is_tried(budgets)
        # Still in flight in the database: Redis counts it, so there is no room.
        assert await _reserve(budgets, limit) is None
        await _settle(budgets, limit, in_the_database)
        assert await _reserve(budgets, limit) is None
        await client.aclose()

    asyncio.run(scenario())
    assert _spent(limit) == usd_to_units(limit.limit_usd)


@pytest.mark.django_db(transaction=True)
def test_one_process_reserving_in_redis_and_in_the_database_at_once_never_overshoots(
        redis_server):
    # The moments an outage starts or ends (or a Redis Cluster master fails over): some of a
    # process's requests reserve in Redis while others reserve in the database. Each side
    # counts the other's; without that, every step marked "overshoot" below was admitted.
    limit = BudgetLimit(scope="key", scope_id=717171, limit_usd=Decimal("0.50"), period="day")
    assert usd_to_units(limit.limit_usd) == 10 * COST

    async def in_redis(budgets: RedisBudgets, request_id: str, cost: int) -> bool:
        try:
            assert await budgets.reserve(request_id=request_id, limits=[limit],
                                         amount_units=cost * COST, now=timezone.now(),
                                         spent_units=_units)
        except BudgetExceeded:
            return False
        return True

    def in_the_database(request_id: str, cost: int, held_elsewhere) -> bool:
        try:
            budget_reserve(request_id=request_id, limits=[limit], amount_units=cost * COST,
                           held_elsewhere=held_elsewhere)
        except BudgetExceeded:
            return False
        return True

    async def scenario() -> None:
        client, budgets = _budgets(redis_server.url)
        assert await in_redis(budgets, "r1", 1)  # Redis knows the counter now, nothing in d
        async with budgets.database_reservation(request_id="d5", limits=[limit],
                                                now=timezone.now(),
                                                amount_units=5 * COST) as held_elsewhere:
            # It counts r1 (1 + 5 fit in 10) and commits; until it returns, it is in flight.
            assert await sync_to_async(in_the_database)("d5", 5, held_elsewhere)
            assert not await in_redis(budgets, "r5", 5)              # overshoot: 11
        assert not await in_redis(budgets, "r5", 5)                  # overshoot: 11
        assert await in_redis(budgets, "r4", 4)                      # exactly 10
        await client.aclose()

        # A reservation on its way to a paused Redis counts for the database meanwhile.
        slow = aioredis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0),
                                       socket_timeout=30, socket_connect_timeout=1)
        budgets = RedisBudgets(slow)
        other = BudgetLimit(scope="key", scope_id=727272, limit_usd=Decimal("0.10"),
                            period="day")
        redis_server.pause()
        try:
            on_its_way = asyncio.create_task(budgets.reserve(
                request_id="r-slow", limits=[other], amount_units=COST, now=timezone.now(),
                spent_units=_units))
            for _ in range(10_000):
                if "r-slow" in budgets._reserving:
                    break
                await asyncio.sleep(0)
            assert "r-slow" in budgets._reserving
            now = timezone.now()
            async with budgets.database_reservation(request_id="d-2", limits=[other], now=now,
                                                    amount_units=2 * COST) as held_elsewhere:
                with pytest.raises(BudgetExceeded):                  # overshoot: 3 of 2
                    await sync_to_async(budget_reserve)(
                        request_id="d-2", limits=[other], amount_units=2 * COST, now=now,
                        held_elsewhere=held_elsewhere)
        finally:
            redis_server.resume()
        assert await on_its_way
        await slow.aclose()

    asyncio.run(scenario())
    counter = BudgetCounter.objects.get(scope="key", scope_id=717171)
    assert counter.reserved_units == 5 * COST
    assert not BudgetCounter.objects.filter(scope="key", scope_id=727272,
                                            reserved_units__gt=0).exists()
