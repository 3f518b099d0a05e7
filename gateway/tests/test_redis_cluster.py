"""Redis Cluster as the shared state (issue 18): gateway processes (uvicorn subprocesses, real
HTTP, the fake upstream on loopback) on a real three-master cluster with one replica per master
(gateway/tests/redis_cluster.py), then the failover of one master.

Budgets and rate limits are exact across two replicas, breakers are shared, the intents of a
killed replica are reaped from their shard, the ledger spool lives on the cluster; and when a
master is SIGKILLed the gateway keeps serving through the failover window and budgets still do
not overshoot, including a reservation the promoted replica lost."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone

from gateway.redis_client import redis_async
from gateway.routing import Candidate, Circuit
from gateway.routing_state import RedisRoutingState
from gateway.tests.redis_cluster import RedisCluster, _command
from gateway.tokens import chat_input_tokens
from providers.models import ApiKey, Team
from usage.budgets import BudgetLimit, units_to_usd, usd_to_units
from usage.budgets_redis import ALL_SHARDS, budget_shard, counter_key, intent_shard
from usage.models import BudgetCounter, UsageRecord
from usage.ratelimits import Limit, RedisRateLimiter

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 1000


def _worst_case() -> Decimal:
    # fake-a's price: 1.00 input / 2.00 output per million tokens (conftest.fake_provider); the
    # gateway reserves the prompt estimate plus max_tokens, exactly in units at these prices.
    return (Decimal(chat_input_tokens(MESSAGES)) * 1 + MAX_TOKENS * 2) / Decimal(1_000_000)


@pytest.fixture(scope="module")
def redis_cluster():
    cluster = RedisCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(redis_cluster, settings):
    """The cluster, empty, and this process's settings pointing at it (the reaper and the spool
    called from the test build their clients from settings, through gateway.redis_client)."""
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    client.close()
    settings.REDIS_URL = redis_cluster.url
    settings.GATEWAY_REDIS_CLUSTER = True
    return redis_cluster


@pytest.fixture
def replicas(gateway_url, redis_cluster):
    """Start n gateway processes (uvicorn subprocesses) on this test's database and the
    cluster, all at once; returns their base URLs once each answers /health. `processes`:
    their Popen objects, stopped at teardown (by PID)."""
    from pathlib import Path

    from django.conf import settings

    from gateway.tests.loopback import this_database_url

    env = {**os.environ, "DATABASE_URL": this_database_url(), "DEBUG": "1",
           "GATEWAY_CONFIG_POLL_S": "0", "REDIS_URL": redis_cluster.url,
           "GATEWAY_REDIS_CLUSTER": "1", "CELERY_BROKER_URL": "memory://"}
    processes: list[subprocess.Popen] = []

    def start(n: int) -> list[str]:
        from gateway.tests.redis_server import free_port

        ports = [free_port() for _ in range(n)]
        for port in ports:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "gateway.asgi:application", "--port", str(port),
                 "--log-level", "warning"], cwd=Path(settings.BASE_DIR), env=env))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 60
        for url, process in zip(urls, processes[-n:]):
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("gateway process did not start") from None
                    time.sleep(0.05)
        return urls

    start.processes = processes
    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(30)


def _sync_client(cluster: RedisCluster) -> redis.cluster.RedisCluster:
    """The test's own client, started from every live node (REDIS_URL's may be the one a test
    killed)."""
    return redis.cluster.RedisCluster(startup_nodes=[
        redis.cluster.ClusterNode("127.0.0.1", port) for port in cluster.ports
        if cluster.alive(port)])


def _config_bump() -> None:
    from providers.services import config_version_bump

    with transaction.atomic():
        config_version_bump()


def _background_provider(fake_upstream) -> None:
    """A second provider, never held at the gate, serving `gpt-bg`."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: fake-b
    kind: openai
    base_url: {fake_upstream.base_url("fake-b")}
    api_key: sk-fake-upstream-secret-b
    models:
      gpt-bg: up-bg
"""))


async def _burst(targets: list[tuple[str, str]], upstream, gate, *, already: int = 0,
                 model: str = "gpt-test") -> list[httpx.Response]:
    """One concurrent request per (base URL, API key); the admitted ones are held at the
    upstream (`gate`, None: not held) until every request has been decided: each has either
    arrived there or been answered. `already`: upstream calls held before this burst."""
    async with httpx.AsyncClient(timeout=30,
                                 limits=httpx.Limits(max_connections=len(targets))) as client:
        tasks = [asyncio.create_task(client.post(
            f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
            json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}))
            for url, key in targets]
        if gate is not None:
            deadline = time.monotonic() + 20
            while (sum(t.done() for t in tasks) + len(upstream.calls("fake-a")) - already
                   < len(targets) and time.monotonic() < deadline):
                await asyncio.sleep(0.01)
            gate.open()
        return await asyncio.gather(*tasks)


def _held_burst(targets, upstream, *, timeout: float = 20.0) -> threading.Thread:
    """Send `targets` in a thread; return once the upstream holds all of them. Their answers
    are not looked at (a test may kill the replica serving them)."""
    before = len(upstream.calls("fake-a"))

    def send() -> None:
        try:
            asyncio.run(_burst(targets, upstream, None))
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    upstream.wait_for_calls(before + len(targets), "fake-a", timeout=timeout)
    return thread


def _statuses(responses: list[httpx.Response]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in responses:
        label = str(r.status_code) if r.status_code != 429 else r.json()["error"].get(
            "code") or r.json()["error"]["type"]
        out[label] = out.get(label, 0) + 1
    return out


def test_budgets_never_overshoot_across_replicas_on_a_cluster(fake_provider, make_key, replicas,
                                                              cluster):
    # Two keys of one team, each with its own budget and the team's: every reservation checks
    # three counters of two scopes, in one script, so they share the team's hash tag. The team
    # budget is exactly 10 worst cases, so 40 concurrent requests over two replicas admit 10.
    gate = fake_provider.gate()
    fake_provider.behave("fake-a", hold=gate)
    budget = _worst_case() * 10
    keys = [make_key(name=f"k{i}", team="research", budget_usd=budget * 2, budget_period="day")
            for i in range(2)]
    Team.objects.filter(name="research").update(budget_usd=budget, budget_period="day")
    _config_bump()
    urls = replicas(2)

    targets = [(urls[i % 2], keys[(i // 2) % 2]) for i in range(40)]
    responses = asyncio.run(_burst(targets, fake_provider, gate))
    assert _statuses(responses) == {"200": 10, "budget_exceeded": 30}
    assert len(fake_provider.calls("fake-a")) == 10

    team = Team.objects.get(name="research")
    ids = list(ApiKey.objects.filter(team=team).values_list("id", flat=True))
    rows = UsageRecord.objects.filter(api_key_id__in=ids)
    spent = sum((r.cost_usd for r in rows.filter(status="ok")), Decimal(0))
    counter = BudgetCounter.objects.get(scope="team", scope_id=team.id)
    assert units_to_usd(counter.spent_units) == spent <= budget
    assert counter.reserved_units == 0
    assert rows.filter(status="rejected").count() == 30

    # The Redis copies: in the team's shard, one slot for all three, nothing left reserved.
    now = timezone.now()
    team_limit = BudgetLimit(scope="team", scope_id=team.id, limit_usd=budget, period="day")
    limits = [BudgetLimit(scope="key", scope_id=i, limit_usd=budget * 2, period="day")
              for i in ids] + [team_limit]
    shard = budget_shard(limits)
    client = _sync_client(cluster)
    names = [counter_key(limit, now, shard) for limit in limits]
    assert len({client.keyslot(name) for name in names}) == 1
    team_copy = client.hgetall(names[-1])
    assert int(team_copy[b"s"]) == counter.spent_units and int(team_copy[b"r"]) == 0
    assert all(int(client.hget(name, "r")) == 0 for name in names)
    assert client.hlen(shard.reservations) == 0
    # The shards spread over every master.
    masters = {cluster.port_for_key(s.reservations) for s in ALL_SHARDS}
    assert len(masters) == 3
    client.close()
    health = httpx.get(f"{urls[0]}/health/detailed", timeout=10).json()
    assert health["redis"]["ok"] and health["redis"]["cluster"]
    assert health["providers"]["fake-a"]["routes"][0]["shared_state"]


def test_rate_limits_are_exact_across_replicas_on_a_cluster(fake_provider, make_key, replicas,
                                                            cluster):
    raw = make_key(rpm=10)
    key = ApiKey.objects.get(name="tests")
    urls = replicas(2)
    responses = asyncio.run(_burst([(urls[i % 2], raw) for i in range(30)], fake_provider, None))
    # 30 requests within a second or two: the 10 of the burst, and none refilled (one per 6 s).
    assert _statuses(responses) == {"200": 10, "rate_limit_exceeded": 20}
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    client = _sync_client(cluster)
    assert client.exists(f"gw:rl:{{{key.id}}}:rpm")
    client.close()


def test_breakers_are_shared_between_processes_on_a_cluster(cluster):
    # Two routing states on two cluster clients, as two processes would have: failures counted
    # by one open the circuit for the other, and its success after the cool-down closes it.
    route = Candidate(route_id=7001, provider_id=71, failure_threshold=3, cooldown_s=5,
                      max_cooldown_s=5)
    other = Candidate(route_id=7002, provider_id=72)

    async def scenario() -> None:
        clients = [aiocluster.RedisCluster.from_url(cluster.url) for _ in range(2)]
        first, second = (RedisRoutingState(c, prefix="gw:") for c in clients)
        now = time.time()
        for _ in range(3):
            await first.record_failure(route, "upstream_5xx", now=now)
        views = await second.snapshot([route, other])
        assert views[route.route_id].state == Circuit.OPEN.value
        assert views[route.route_id].consecutive_failures == 3 and views[route.route_id].shared
        plan = await second.plan("m", [route, other], now=now + 1)
        assert [c.route_id for c in plan.routes] == [other.route_id]
        # After the cool-down one caller, on either process, wins the probe.
        probes = [await state.plan("m", [route, other], now=now + 6) for state in (second, first)]
        assert [p.probe for p in probes] == [route.route_id, None]
        await second.record_success(route)
        assert (await first.snapshot([route]))[route.route_id].state == Circuit.CLOSED.value
        lease = await first.acquire(route)
        assert (await second.snapshot([route]))[route.route_id].in_flight == 1
        await second.release(lease)
        assert (await first.snapshot([route]))[route.route_id].in_flight == 0
        assert not first.degraded and not second.degraded
        for c in clients:
            await c.aclose()

    asyncio.run(scenario())


def test_limits_of_two_subjects_are_charged_apart_and_refunded_on_refusal(cluster):
    # Different subjects hash to different slots: each is charged in its own script, and the
    # first is refunded when the second refuses, so a refused request costs nothing.
    async def scenario() -> None:
        client = aiocluster.RedisCluster.from_url(cluster.url)
        limiter = RedisRateLimiter(client)
        assert await limiter.acquire_all([Limit("rpm:1", 5, 1), Limit("rpm:2", 1, 1)]) is None
        refusal = await limiter.acquire_all([Limit("rpm:1", 5, 1), Limit("rpm:2", 1, 1)])
        assert refusal is not None and refusal.name == "rpm:2"
        # rpm:1 holds one request, not two: four more fit, the fifth does not.
        for _ in range(4):
            assert await limiter.acquire("rpm:1", per_minute=5, cost=1) is None
        assert await limiter.acquire("rpm:1", per_minute=5, cost=1) is not None
        assert client.keyslot("gw:rl:{1}:rpm") != client.keyslot("gw:rl:{2}:rpm")
        await client.aclose()

    asyncio.run(scenario())


def test_pubsub_through_the_client_factory_on_a_cluster(cluster):
    # The factory's cluster client is what a pub/sub listener gets (gateway.redis_client): a
    # message published through one process's client reaches a subscriber on another's,
    # whichever nodes their connections landed on.
    async def scenario() -> None:
        publisher, subscriber = redis_async(), redis_async()
        await subscriber.initialize()  # the cluster pubsub reads the slot map, never loads it
        pubsub = subscriber.pubsub()
        await pubsub.subscribe("gw:test-channel")
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            await publisher.publish("gw:test-channel", b"hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        assert message is not None and message["data"] == b"hello"
        await pubsub.aclose()
        for client in (publisher, subscriber):
            await client.aclose()

    asyncio.run(scenario())


def test_a_connection_torn_down_under_a_command_is_a_connection_error(cluster):
    # On a failover redis-py disconnects a node's idle connections while other tasks are taking
    # them; on uvloop (the gateway's loop under uvicorn) a command then writes to a closed
    # transport and redis-py lets uvloop's RuntimeError out, which no store takes for "Redis is
    # unreachable", so the request failed with a 500. The transport is closed here as that
    # disconnect closes it; the factory's client raises a ConnectionError, for a command and a
    # pipeline, and the next command is served on a new connection.
    import uvloop
    from redis.exceptions import ConnectionError as RedisConnectionError

    def close_the_idle_connection(client, key: str) -> None:
        node = client.get_node_from_key(key)
        assert len(node._free) == 1 and node._free[0].is_connected
        node._free[0]._writer.transport.abort()

    async def scenario() -> None:
        client = redis_async()
        await client.set("gw:torn", "1")
        close_the_idle_connection(client, "gw:torn")
        with pytest.raises(RedisConnectionError, match="RuntimeError"):
            await client.get("gw:torn")
        assert await client.get("gw:torn") == b"1"

        close_the_idle_connection(client, "gw:torn")
        pipe = client.pipeline(transaction=False)
        pipe.get("gw:torn")
        with pytest.raises(RedisConnectionError, match="RuntimeError"):
            await pipe.execute()
        pipe = client.pipeline(transaction=False)
        pipe.get("gw:torn")
        assert await pipe.execute() == [b"1"]
        await client.aclose()

    uvloop.run(scenario())


def test_a_cluster_without_a_celery_broker_is_refused_at_startup():
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:7000/0", "GATEWAY_REDIS_CLUSTER": "1",
           "CELERY_BROKER_URL": "", "DEBUG": "1"}
    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, text=True,
                            capture_output=True, cwd=django_settings.BASE_DIR, timeout=60)
    assert result.returncode != 0
    assert "CELERY_BROKER_URL must name a standalone Redis" in result.stderr
    env["CELERY_BROKER_URL"] = "redis://127.0.0.1:7001/0"
    assert subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True,
                          cwd=django_settings.BASE_DIR, timeout=60).returncode == 0


def test_intents_of_a_killed_replica_are_reaped_from_their_shards(fake_provider, make_key,
                                                                  replicas, cluster):
    from usage.intents import intents_reap

    gate = fake_provider.gate()
    fake_provider.behave("fake-a", hold=gate)
    budget = _worst_case() * 10
    budgeted = make_key(name="budgeted", budget_usd=budget, budget_period="day")
    free = make_key(name="free")
    [url] = replicas(1)
    _held_burst([(url, budgeted), (url, free)], fake_provider)

    key = ApiKey.objects.get(name="budgeted")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=budget, period="day")
    shard = budget_shard([limit])
    client = _sync_client(cluster)
    in_shard = {i.decode() for i in client.hkeys(shard.intents)}
    everywhere = {i.decode() for s in ALL_SHARDS for i in client.hkeys(s.intents)}
    assert len(everywhere) == 2
    [budgeted_id] = set(client.hkeys(shard.reservations))
    assert budgeted_id.decode() in in_shard  # written with its reservation, in its shard
    [unbudgeted_id] = everywhere - {budgeted_id.decode()}
    assert client.hexists(intent_shard(unbudgeted_id).intents, unbudgeted_id)

    process = replicas.processes[-1]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    gate.open()
    reaped = intents_reap(redis_before=timezone.now() + timedelta(days=1), db_before=None)
    assert (reaped.lost, reaped.redis_ok) == (2, True)
    rows = UsageRecord.objects.filter(status="lost")
    assert sorted(rows.values_list("request_id", flat=True)) == sorted(everywhere)
    # The reservation settled at the lost row's estimate, in Redis and in the database.
    [lost] = rows.filter(api_key_id=key.id)
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    assert counter.spent_units == usd_to_units(lost.cost_usd) > 0
    copy = client.hgetall(counter_key(limit, lost.created_at, shard))
    assert int(copy[b"r"]) == 0 and int(copy[b"s"]) == counter.spent_units
    assert not any(client.hlen(s.intents) for s in ALL_SHARDS)
    assert client.hlen(shard.reservations) == 0
    # A second reaper finds nothing: no second row, nothing charged twice.
    assert intents_reap(redis_before=timezone.now() + timedelta(days=1), db_before=None).lost == 0
    assert BudgetCounter.objects.get(pk=counter.pk).spent_units == counter.spent_units
    client.close()


def test_the_ledger_spool_lives_on_the_cluster(fake_provider, api_key, replicas, cluster):
    from usage.spool import REDIS_KEY, ledger_spool_flush

    table = UsageRecord._meta.db_table
    [url] = replicas(1)
    client = _sync_client(cluster)

    def rename(old: str, new: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO "
                           f"{connection.ops.quote_name(new)}")

    rename(table, table + "_offline")
    try:
        responses = asyncio.run(_burst([(url, api_key)] * 20, fake_provider, None))
        assert _statuses(responses) == {"200": 20}
        deadline = time.monotonic() + 20
        while client.llen(REDIS_KEY) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.llen(REDIS_KEY) == 20  # on the master of the spool's slot, persisted
    finally:
        rename(table + "_offline", table)
    ledger_spool_flush()
    deadline = time.monotonic() + 20
    while UsageRecord.objects.count() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert UsageRecord.objects.filter(status="ok").count() == 20
    assert client.llen(REDIS_KEY) == 0
    client.close()


def test_failover_of_a_master_keeps_serving_and_budgets_do_not_overshoot(
        fake_provider, make_key, replicas, cluster):
    # The master holding a key's budget shard is SIGKILLed while four of its requests are in
    # flight (reserved there, replicated: WAIT). Through the failover window the gateway serves
    # (other traffic: stores fall back per process and to the database); once the replica is
    # promoted, one reservation it "lost" (removed from it, as asynchronous replication may
    # lose the last writes) is held again by its process before that process reserves again,
    # so a budget of exactly 10 worst cases still admits exactly 6 more.
    _background_provider(fake_provider)
    gate = fake_provider.gate()
    fake_provider.behave("fake-a", hold=gate)
    budget = _worst_case() * 10
    budgeted = make_key(name="budgeted", budget_usd=budget, budget_period="day")
    free = make_key(name="free")
    first, second = replicas(2)
    key = ApiKey.objects.get(name="budgeted")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=budget, period="day")
    shard = budget_shard([limit])
    master = cluster.port_for_key(shard.reservations)
    replica = cluster.replica_of(master)

    held = _held_burst([(first, budgeted)] * 4, fake_provider)
    client = _sync_client(cluster)
    assert client.hlen(shard.reservations) == 4
    assert _command(master, "WAIT", "1", "2000") == "1"  # the replica has the four

    background: list[int] = []
    stop = threading.Event()

    def serve_in_background() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                for url in (first, second):
                    background.append(http.post(
                        f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {free}"},
                        json={"model": "gpt-bg", "messages": MESSAGES}).status_code)

    loader = threading.Thread(target=serve_in_background, daemon=True)
    loader.start()
    killed_at = time.monotonic()
    cluster.kill(master)
    took = cluster.wait_promoted(replica)
    window = len(background)
    stop.set()
    loader.join(timeout=30)
    assert window > 0 and set(background) == {200}, (took, background)

    # What the promoted replica "lost": one of the four, its room handed back.
    client.close()
    client = _sync_client(cluster)
    assert cluster.port_for_key(shard.reservations) == replica
    lost_id, data = next(iter(client.hgetall(shard.reservations).items()))
    amount, *counters = data.decode().split()
    client.hdel(shard.reservations, lost_id)
    client.zrem(shard.expiry, lost_id)
    for name in counters:
        client.hincrby(name, "r", -int(amount))

    responses = asyncio.run(_burst([(first, budgeted)] * 20, fake_provider, gate, already=4))
    held.join(timeout=30)
    assert _statuses(responses) == {"200": 6, "budget_exceeded": 14}
    ok = UsageRecord.objects.filter(api_key_id=key.id, status="ok")
    assert ok.count() == 10
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    assert units_to_usd(counter.spent_units) == sum(r.cost_usd for r in ok) <= budget
    copy = client.hgetall(counter_key(limit, timezone.now(), shard))
    # Nothing is left reserved in Redis. Its spend equals the database's, unless a request of
    # the burst found the promoted master's connection torn down and reserved in the database
    # (a busy machine): that spend reaches Redis's copy at its next sync.
    assert int(copy[b"r"]) == 0 and int(copy[b"s"]) <= counter.spent_units
    assert client.hlen(shard.reservations) == 0
    client.close()
    assert time.monotonic() - killed_at < 30
