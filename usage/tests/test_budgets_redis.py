"""Budget reservations in Redis (REDIS_URL set): the gateway reserves there, the database keeps
the spend, and Redis starts from the database's figures. Skipped without Redis."""
from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.utils import timezone

from gateway.errors import BudgetExceeded
from providers.models import ApiKey
from usage.budgets import BudgetLimit, period_bounds, units_to_usd, usd_to_units
from usage.budgets_redis import RedisBudgets, budget_shard, counter_key
from usage.models import BudgetCounter, BudgetReservation, UsageRecord

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="budgets use Redis only with REDIS_URL")

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}


def _post(url: str, key: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=30,
                      headers={"authorization": f"Bearer {key}"}, **kwargs)


def test_reservation_is_held_in_redis_and_spend_lands_in_both(gateway_url, fake_provider, make_key):
    fake_provider.behave("fake-a", latency_s=1.0)
    raw = make_key(budget_usd=Decimal("5"), budget_period="day")
    key = ApiKey.objects.get(name="tests")
    client = redis.Redis.from_url(settings.REDIS_URL)
    seen_in_flight: list[dict] = []
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("5"), period="day")
    reservations = budget_shard([limit]).reservations

    def watch() -> None:
        for _ in range(80):
            held = client.hgetall(reservations)
            if held:
                seen_in_flight.append(held)
                return
            threading.Event().wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    response = _post(gateway_url, raw)
    watcher.join()
    assert response.status_code == 200
    # While the upstream answered, the reservation was a Redis entry, not a database row.
    assert seen_in_flight and len(seen_in_flight[0]) == 1
    assert not BudgetReservation.objects.exists()
    assert client.hlen(reservations) == 0

    row = UsageRecord.objects.get(api_key_id=key.id)
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    assert counter.reserved_units == 0
    assert units_to_usd(counter.spent_units) == row.cost_usd > 0
    shared = client.hgetall(counter_key(limit, row.created_at))
    assert int(shared[b"s"]) == counter.spent_units and int(shared[b"r"]) == 0
    client.close()


def test_redis_starts_from_the_spend_recorded_in_the_database(gateway_url, fake_provider, make_key):
    raw = make_key(budget_usd=Decimal("1"), budget_period="month")
    key = ApiKey.objects.get(name="tests")
    start, _ = period_bounds("month", timezone.now())
    # Spent before Redis knew the key (an earlier process, or a Redis restart).
    BudgetCounter.objects.create(scope="key", scope_id=key.id, period="month", period_start=start,
                                 spent_units=usd_to_units(Decimal("0.999")))
    refused = _post(gateway_url, raw)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert not fake_provider.calls()


def test_budget_raised_by_an_admin_applies_to_the_next_request(gateway_url, fake_provider, make_key):
    raw = make_key(budget_usd=Decimal("0.0001"), budget_period="day")
    assert _post(gateway_url, raw).status_code == 429
    from django.db import transaction

    from providers.services import api_key_changes_publish
    ApiKey.objects.filter(name="tests").update(budget_usd=Decimal("10"))
    with transaction.atomic():
        api_key_changes_publish(digests={ApiKey.objects.get(name="tests").key_hash})
    deadline = timezone.now() + timedelta(seconds=5)
    while (status := _post(gateway_url, raw).status_code) == 429 and timezone.now() < deadline:
        asyncio.run(asyncio.sleep(0.2))
    assert status == 200


def _budgets(url: str) -> tuple[aioredis.Redis, RedisBudgets]:
    client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return client, RedisBudgets(client)


async def _zero(limit, now) -> int:
    return 0


def test_abandoned_reservation_is_reaped_after_its_ttl(gateway_url):
    limit = BudgetLimit(scope="key", scope_id=987654, limit_usd=Decimal("1"), period="total")
    amount = usd_to_units(Decimal("0.6"))

    async def scenario() -> None:
        client, budgets = _budgets(settings.REDIS_URL)
        long_ago = timezone.now() - timedelta(hours=2)
        # A worker reserved and crashed two hours ago: it never settles.
        assert await budgets.reserve(request_id="crashed", limits=[limit], amount_units=amount,
                                     now=long_ago, spent_units=_zero)
        now = timezone.now()
        # The next reservation reaps it, so the budget has room again.
        assert await budgets.reserve(request_id="next", limits=[limit], amount_units=amount,
                                     now=now, spent_units=_zero)
        with pytest.raises(BudgetExceeded):
            await budgets.reserve(request_id="third", limits=[limit], amount_units=amount,
                                  now=now, spent_units=_zero)
        await budgets.settle(request_id="next", limits=[limit], at=now, cost_units=100)
        row = await client.hgetall(counter_key(limit, now))
        assert int(row[b"s"]) == 100 and int(row[b"r"]) == 0
        await client.aclose()

    asyncio.run(scenario())


def test_reserve_is_all_or_nothing_across_scopes(gateway_url):
    key_limit = BudgetLimit(scope="key", scope_id=1111, limit_usd=Decimal("10"), period="day")
    team_limit = BudgetLimit(scope="team", scope_id=2222, limit_usd=Decimal("1"), period="day")

    async def scenario() -> None:
        client, budgets = _budgets(settings.REDIS_URL)
        now = timezone.now()
        with pytest.raises(BudgetExceeded, match="team"):
            await budgets.reserve(request_id="r1", limits=[key_limit, team_limit],
                                  amount_units=usd_to_units(Decimal("2")), now=now, spent_units=_zero)
        # Both counters live in the team's shard (usage.budgets_redis.budget_shard).
        shard = budget_shard([key_limit, team_limit])
        assert shard == budget_shard([team_limit])
        row = await client.hgetall(counter_key(key_limit, now, shard))
        assert int(row[b"r"]) == 0  # the key's scope kept nothing of the refused request
        assert int((await client.hgetall(counter_key(team_limit, now, shard)))[b"r"]) == 0
        await client.aclose()

    asyncio.run(scenario())


def test_unreachable_redis_hands_reservation_back_to_the_database(gateway_url):
    limit = BudgetLimit(scope="key", scope_id=1, limit_usd=Decimal("1"), period="day")

    async def scenario() -> bool:
        client, budgets = _budgets("redis://127.0.0.1:1/0")
        reserved = await budgets.reserve(request_id="r", limits=[limit], amount_units=1,
                                         now=timezone.now(), spent_units=_zero)
        await client.aclose()
        return reserved

    assert asyncio.run(scenario()) is False


def test_reconciliation_reseeds_the_redis_copy_of_a_corrected_counter(gateway_url, fake_provider,
                                                                      make_key):
    from usage.rollups import budget_counters_reconcile

    raw = make_key(budget_usd=Decimal("5"), budget_period="week")
    key = ApiKey.objects.get(name="tests")
    assert _post(gateway_url, raw).status_code == 200
    row = UsageRecord.objects.get(api_key_id=key.id)
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("5"), period="week")
    client = redis.Redis.from_url(settings.REDIS_URL)
    shared = counter_key(limit, row.created_at)
    assert client.exists(shared)
    # The database counter drifted (say, an operator edited it); the ledger is the truth.
    BudgetCounter.objects.filter(scope="key", scope_id=key.id).update(spent_units=0)
    assert budget_counters_reconcile() == 1
    assert not client.exists(shared)
    assert _post(gateway_url, raw).status_code == 200
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    assert units_to_usd(counter.spent_units) == sum(
        r.cost_usd for r in UsageRecord.objects.filter(api_key_id=key.id))
    assert int(client.hget(shared, "s")) == counter.spent_units
    client.close()


def test_settlement_survives_a_flushed_script_cache(gateway_url, fake_provider, make_key):
    # The end-of-request releases go in one pipeline by script digest; a Redis that forgot its
    # scripts (restart, SCRIPT FLUSH) answers NOSCRIPT there, and each is redone on its own.
    raw = make_key(budget_usd=Decimal("5"), budget_period="day", tpm=1_000_000)
    key = ApiKey.objects.get(name="tests")
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert _post(gateway_url, raw).status_code == 200
    client.script_flush()
    assert _post(gateway_url, raw).status_code == 200
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("5"), period="day")
    assert client.hlen(budget_shard([limit]).reservations) == 0
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    shared = client.hgetall(counter_key(limit, timezone.now()))
    assert int(shared[b"r"]) == 0 and int(shared[b"s"]) == counter.spent_units
    assert units_to_usd(counter.spent_units) == sum(
        r.cost_usd for r in UsageRecord.objects.filter(api_key_id=key.id))
    client.close()


def test_a_burst_beyond_the_redis_pool_default_waits_for_connections():
    # A busy worker has far more Redis calls in flight than redis-py's default pool allows
    # (100). They must wait for a connection: a refusal (MaxConnectionsError, or "No connection
    # available" from a pool that stopped waiting) was taken for Redis being down, and limits
    # and budgets fell back to their slower paths. A loaded machine may still make a call miss
    # its 0.5 s socket timeout; that is not a refusal, so it is the only failure allowed (how
    # many, depends on the load: a loaded CI run answered 207 of 300).
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from gateway.clients import client_pool

    in_flight = peak = 0

    async def one(client) -> object:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await client.eval("return 1", 0)
        except Exception as exc:
            return exc
        finally:
            in_flight -= 1

    async def burst() -> list:
        client = client_pool.redis()
        try:
            return await asyncio.gather(*[one(client) for _ in range(300)])
        finally:
            await client_pool.close()

    outcomes = asyncio.run(burst())
    assert peak > 100  # more calls in flight at once than the default pool would serve
    failures = [o for o in outcomes if o != 1]
    assert all(isinstance(o, RedisTimeoutError) for o in failures), {repr(o) for o in failures}
