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
        await sync_to_async(budget_reserve)(
            request_id=request_id, limits=[limit], amount_units=COST, now=now,
            held_elsewhere=budgets.held_units(limits=[limit], now=now))
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
