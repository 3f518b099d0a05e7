"""API keys outside the routing snapshot (issue 18): looked up by digest into a bounded LRU,
evicted per key by Redis pub/sub (a private redis-server) or by the key change feed (no Redis),
and a key change never reloads the routes, whatever the number of keys."""
from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gateway import database
from gateway.database import db
from gateway.tests.redis_server import RedisServer
from providers import cache
from providers.cache import KeyCache, SnapshotCache, _fresh_snapshot
from providers.config_file import config_parse
from providers.key_events import CHANNEL
from providers.keys import api_key_generate, api_key_hash, api_key_prefix
from providers.models import ApiKey, ConfigVersion, KeyChange, Team
from providers.selectors import routing_snapshot_load
from providers.services import (KEY_FEED_PRUNE_EVERY, api_key_changes_publish, api_key_create,
                                api_key_revoke, api_key_rotate, config_apply)

pytestmark = pytest.mark.django_db(transaction=True)  # lookups run on the database's threads

ROUTES = """
providers:
  - name: mock
    kind: mock
    models:
      demo: mock-echo
prices:
  - model: mock-echo
    input: "0.15"
    output: "0.60"
"""


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def with_redis(redis_server, settings) -> str:
    settings.REDIS_URL = redis_server.url
    return redis_server.url


async def _until(condition, *, timeout: float, what: str) -> float:
    """Seconds until `condition()` holds (checked every 5 ms on the running loop)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def _revoke(pk: int) -> None:
    api_key_revoke(key=ApiKey.objects.get(pk=pk), actor="tests")


def _rotate(pk: int, grace: timedelta) -> str:
    return api_key_rotate(key=ApiKey.objects.get(pk=pk), grace=grace, actor="tests")


def _subscribers(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0)
    finally:
        client.close()


def test_a_revoked_key_is_evicted_by_pubsub_within_a_second(with_redis, settings):
    settings.GATEWAY_CONFIG_POLL_S = 3600  # the feed is read once, at the first lookup
    keys = KeyCache()
    key, raw = api_key_create(name="soon-revoked")
    digest = api_key_hash(raw)

    async def scenario() -> float:
        assert (await keys.find(digest)).id == key.id
        await _until(lambda: _subscribers(with_redis) == 1, timeout=5, what="subscribed")
        assert await keys.find(digest) is not None and keys.lookups == 1
        await db.run(_revoke, pk=key.pk)
        took = await _until(lambda: len(keys) == 0, timeout=1, what="evicted by the message")
        assert await keys.find(digest) is None and keys.lookups == 2
        await keys.stop()
        return took

    assert asyncio.run(scenario()) < 1.0


def test_a_rotation_evicts_the_previous_secrets_by_pubsub(with_redis, settings):
    settings.GATEWAY_CONFIG_POLL_S = 3600
    keys = KeyCache()
    key, first = api_key_create(name="rotated")

    async def scenario() -> None:
        await _until(lambda: _subscribers(with_redis) == 0, timeout=5, what="earlier listener gone")
        assert await keys.find(api_key_hash(first)) is not None
        await _until(lambda: _subscribers(with_redis) == 1, timeout=5, what="subscribed")
        second = await db.run(_rotate, pk=key.pk, grace=timedelta(hours=1))
        assert await keys.find(api_key_hash(second)) is not None
        assert await keys.find(api_key_hash(first)) is not None  # within its grace
        lookups = keys.lookups
        await db.run(_rotate, pk=key.pk, grace=timedelta(0))
        # Both secrets stop at once: the cached copy of the one in its grace is evicted too.
        await _until(lambda: len(keys) == 0, timeout=1, what="both digests evicted")
        assert await keys.find(api_key_hash(first)) is None
        assert await keys.find(api_key_hash(second)) is None
        assert keys.lookups == lookups + 2
        await keys.stop()

    asyncio.run(scenario())


def test_without_redis_the_feed_evicts_within_the_poll_interval(settings):
    settings.REDIS_URL = ""
    settings.GATEWAY_CONFIG_POLL_S = 0.2
    keys = KeyCache()
    key, raw = api_key_create(name="soon-revoked", team="ops")
    digest = api_key_hash(raw)

    async def scenario() -> None:
        found = await keys.find(digest)
        assert found.team_budget_usd is None and keys.lookups == 1
        # A team's new budget reaches its keys' cached copies through one feed row.
        team = await db.run(Team.objects.get, name="ops")
        team.budget_usd = Decimal("5")
        await db.run(team.save)
        await db.run(api_key_changes_publish, team=team)
        started = time.monotonic()
        while (await keys.find(digest)).team_budget_usd != Decimal("5"):
            assert time.monotonic() - started < 0.2 + 0.5, "the team change is not seen"
            await asyncio.sleep(0.02)
        assert keys.lookups == 2

        await db.run(_revoke, pk=key.pk)
        started = time.monotonic()
        while await keys.find(digest) is not None:
            assert time.monotonic() - started < 0.2 + 0.5, "the revoked key is still served"
            await asyncio.sleep(0.02)
        assert keys.lookups == 3

    asyncio.run(scenario())


def test_the_cache_holds_at_most_its_bound_least_recently_used_first(settings):
    settings.REDIS_URL = ""
    settings.GATEWAY_KEY_CACHE_SIZE = 5
    keys = KeyCache()
    digests = [api_key_hash(api_key_create(name=f"k{i}")[1]) for i in range(8)]

    async def scenario() -> None:
        for digest in digests[:5]:
            assert await keys.find(digest) is not None
        assert await keys.find(digests[0]) is not None  # used again: now the newest
        assert len(keys) == 5 and keys.lookups == 5
        for digest in digests[5:]:
            assert await keys.find(digest) is not None
        assert len(keys) == 5 and keys.lookups == 8
        # Evicted, oldest use first: 1, 2, 3. Kept: 0 (used again), 4, 5, 6, 7.
        for digest in [digests[0], *digests[4:]]:
            await keys.find(digest)
        assert keys.lookups == 8
        await keys.find(digests[1])
        assert len(keys) == 5 and keys.lookups == 9

    asyncio.run(scenario())


def test_an_unknown_digest_is_remembered_until_a_key_is_created_under_it(settings):
    settings.REDIS_URL = ""
    settings.GATEWAY_CONFIG_POLL_S = 0.05
    keys = KeyCache()
    raw = api_key_generate()
    digest = api_key_hash(raw)

    async def scenario() -> None:
        assert await keys.find(digest) is None
        assert [await keys.find(digest) for _ in range(5)] == [None] * 5
        assert keys.lookups == 1  # confirmed unknown: not asked again for UNKNOWN_TTL_S
        assert cache.UNKNOWN_TTL_S == 2.0

        def create() -> None:  # what api_key_create does, under a digest we know in advance
            key = ApiKey.objects.create(name="late", prefix=api_key_prefix(raw), key_hash=digest)
            api_key_changes_publish(digests={key.key_hash})

        await db.run(create)
        started = time.monotonic()
        while await keys.find(digest) is None:  # the feed evicts the negative entry
            assert time.monotonic() - started < 1.0, "still refused from the negative cache"
            await asyncio.sleep(0.02)
        assert keys.lookups == 2

    asyncio.run(scenario())


def test_with_100k_keys_a_key_change_reloads_no_routes(settings):
    settings.REDIS_URL = ""
    settings.GATEWAY_CONFIG_POLL_S = 0  # every request checks the version and the feed
    config_apply(spec=config_parse(ROUTES))
    ApiKey.objects.bulk_create(
        (ApiKey(name=f"bulk-{i}", prefix=f"gw-b{i:06d}", key_hash=f"{i:064x}")
         for i in range(100_000)), batch_size=5_000)
    assert ApiKey.objects.count() == 100_000
    snapshots, keys = SnapshotCache(), KeyCache()

    with CaptureQueriesContext(connection) as load:
        snapshot = routing_snapshot_load()
    assert "providers_apikey" not in " ".join(q["sql"] for q in load.captured_queries)
    assert len(load.captured_queries) <= 4 and snapshot.deployments

    async def scenario() -> None:
        first = await snapshots.get()
        assert snapshots.loads == 1
        for n in range(3):
            key, raw = await db.run(api_key_create, name=f"churn-{n}")
            assert (await keys.find(api_key_hash(raw))).id == key.id
            await db.run(_revoke, pk=key.pk)
            assert await snapshots.get() is first
            assert await keys.find(api_key_hash(raw)) is None
        assert snapshots.loads == 1 and len(keys) == 0
        assert keys.lookups == 6  # one per key before, one after its revocation
        assert await db.run(lambda: ConfigVersion.objects.get().token) == version
        # A route change does reload, once.
        await db.run(config_apply, spec=config_parse(ROUTES.replace("input: \"0.15\"",
                                                                    "input: \"0.20\"")))
        assert await snapshots.get() is not first and snapshots.loads == 2

    version = ConfigVersion.objects.get().token
    asyncio.run(scenario())
    assert KeyChange.objects.count() == 6
    # Checking a version a key change left alone is one query, and returns the same object.
    current = routing_snapshot_load()
    api_key_revoke(key=ApiKey.objects.get(name="bulk-7"), actor="tests")
    with CaptureQueriesContext(connection) as check:
        assert _fresh_snapshot(current) is current
    assert len(check.captured_queries) == 1


def test_feed_rows_past_their_retention_are_pruned_as_rows_are_written(settings):
    settings.GATEWAY_KEY_FEED_RETENTION_S = 0
    api_key_changes_publish(digests={"f" * 64})
    first = KeyChange.objects.get().id
    for n in range(2 * KEY_FEED_PRUNE_EVERY):
        api_key_changes_publish(digests={f"{n:064x}"})
    ids = list(KeyChange.objects.order_by("id").values_list("id", flat=True))
    newest = ids[-1]
    pruned_at = newest - newest % KEY_FEED_PRUNE_EVERY
    # The last row whose id is a multiple of KEY_FEED_PRUNE_EVERY deleted every older one.
    assert first < pruned_at and ids == list(range(pruned_at, newest + 1))


def test_the_polls_run_in_their_own_task_and_no_request_waits_for_them(settings):
    """Issue 22: the request that found the config version or the key feed due used to read it
    itself. Here every database thread is held while both polls are due: requests still answer
    from what is cached, and the polling task alone reads the change once the threads are free."""
    settings.REDIS_URL = ""
    settings.GATEWAY_CONFIG_POLL_S = 1.5
    config_apply(spec=config_parse(ROUTES))
    _, raw = api_key_create(name="polled")
    digest = api_key_hash(raw)
    snapshots, keys = SnapshotCache(), KeyCache()
    threads = 1 if connection.vendor == "sqlite" else database.MAX_THREADS

    async def scenario() -> None:
        first = await snapshots.get()
        key = await keys.find(digest)
        assert snapshots.loads == 1 and keys.lookups == 1
        release = threading.Event()
        held = [asyncio.ensure_future(db.run(release.wait, timeout=60)) for _ in range(threads)]
        # Both polls are due after 1.5 s, and their task's reads wait for a thread; a request
        # would read them itself only after 3 s.
        await asyncio.sleep(1.7)
        assert await asyncio.wait_for(snapshots.get(), 30) is first
        assert await asyncio.wait_for(keys.find(digest), 30) == key
        assert not release.is_set() and keys.lookups == 1
        release.set()
        assert all(await asyncio.gather(*held))
        # With no request at all, the task reads a route change and a revocation.
        await asyncio.to_thread(config_apply, spec=config_parse(ROUTES.replace('"0.15"', '"0.20"')))
        await asyncio.to_thread(_revoke, pk=key.id)
        await _until(lambda: snapshots.loads == 2 and len(keys) == 0, timeout=10,
                     what="the polling task read the route change and the revocation")
        assert await snapshots.get() is not first and await keys.find(digest) is None

    asyncio.run(scenario())
