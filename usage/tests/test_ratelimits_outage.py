"""Rate limits across a Redis outage, on a redis-server of this module's own: two limiters
stand for two replicas (their own clients and per-process state, one Redis). While Redis is
unreachable each enforces its share, starting from the backlog Redis last answered; a Redis
that restarts empty is seeded from them. Admitted stays within 1.1x of what one bucket allows."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.tests.redis_server import RedisServer
from usage.ratelimits import Limit, RedisRateLimiter

PER_MINUTE = 60


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=0.2,
                                   socket_connect_timeout=0.2)


async def _replicas(url: str, prefix: str) -> tuple[list[aioredis.Redis], list[RedisRateLimiter]]:
    clients = [_client(url), _client(url)]
    limiters = [RedisRateLimiter(c, prefix=prefix, retry_interval_s=0.3, heartbeat_s=0.05)
                for c in clients]
    # Both announce themselves and count each other (bounded: a heartbeat is due every 50 ms).
    for _ in range(100):
        for limiter in limiters:
            await limiter.acquire("warm-up", per_minute=10**6, cost=1)
        if all(limiter.replicas == 2 for limiter in limiters):
            return clients, limiters
        await asyncio.sleep(0.05)
    raise AssertionError("the two limiters never counted each other")


async def _attempts(limiters: list[RedisRateLimiter], name: str, rounds: int) -> int:
    admitted = 0
    for _ in range(rounds):
        for limiter in limiters:
            admitted += await limiter.acquire_all([Limit(name, PER_MINUTE, 1)]) is None
    return admitted


def _allowed(elapsed_s: float) -> float:
    """What one shared bucket admits over `elapsed_s`: a full burst plus the refill."""
    return PER_MINUTE + PER_MINUTE * elapsed_s / 60


def test_two_replicas_admit_at_most_the_limit_across_a_pause_and_an_empty_restart(redis_server):
    async def scenario() -> None:
        clients, limiters = await _replicas(redis_server.url, f"gwtest:{uuid.uuid4().hex}:")
        name = "rpm:1"
        started = time.monotonic()
        shared = await _attempts(limiters, name, 40)
        assert PER_MINUTE <= shared <= _allowed(time.monotonic() - started)

        redis_server.pause()
        during = await _attempts(limiters, name, 20)
        assert all(limiter._shared.degraded for limiter in limiters)
        redis_server.kill()
        redis_server.start()
        # Past the retry interval: the next call writes back, then is shared again.
        await asyncio.sleep(0.35)
        after = await _attempts(limiters, name, 20)
        assert not any(limiter._shared.degraded for limiter in limiters)
        elapsed = time.monotonic() - started

        admitted = shared + during + after
        # Each process starts its outage share as full as the shared bucket was, and the
        # restarted Redis continues from them: only the refill is admitted after the burst.
        assert admitted <= 1.1 * _allowed(elapsed), (shared, during, after, elapsed)
        assert during + after <= 1.1 * PER_MINUTE * elapsed / 60 + 2, (during, after, elapsed)
        for c in clients:
            await c.aclose()

    asyncio.run(scenario())


def test_a_fresh_key_during_an_outage_gets_a_share_of_the_limit(redis_server):
    async def scenario() -> None:
        clients, limiters = await _replicas(redis_server.url, f"gwtest:{uuid.uuid4().hex}:")
        redis_server.pause()
        try:
            admitted = await _attempts(limiters, "rpm:fresh", 60)
        finally:
            redis_server.resume()
        # Two replicas, each with half of a 60/min burst (plus at most a refill or two).
        assert PER_MINUTE <= admitted <= PER_MINUTE + 2
        for c in clients:
            await c.aclose()

    asyncio.run(scenario())


def test_a_replica_started_just_before_another_counts_it_within_the_startup_heartbeat(
        redis_server):
    """With the production heartbeat (5 s), a process younger than the replica TTL recounts
    every startup heartbeat: the first of two replicas learns of the second at its next
    recount, not a whole heartbeat later (during which an outage would let it admit the whole
    limit). Here the startup heartbeat is 0.1 s."""
    async def scenario() -> None:
        clients = [_client(redis_server.url), _client(redis_server.url)]
        first, second = (RedisRateLimiter(c, prefix="gw:rl:young:", startup_heartbeat_s=0.1)
                         for c in clients)
        await first.acquire("young", per_minute=10**6, cost=1)
        await second.acquire("young", per_minute=10**6, cost=1)
        assert (first.replicas, second.replicas) == (1, 2)
        await asyncio.sleep(0.15)  # let the first one's startup heartbeat come due
        await first.acquire("young", per_minute=10**6, cost=1)
        assert first.replicas == 2
        for client in clients:
            await client.aclose()

    asyncio.run(scenario())
