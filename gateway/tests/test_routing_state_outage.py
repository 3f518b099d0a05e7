"""Breakers across a Redis outage, on a redis-server of this module's own: a process keeps its
last view of the breakers while Redis is unreachable and writes it back when Redis returns, so
a Redis that restarted empty does not send traffic to a route that was failing."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.routing import Candidate
from gateway.routing_state import RedisRoutingState
from gateway.tests.redis_server import RedisServer

FAILING = Candidate(1, 1, failure_threshold=2, cooldown_s=300.0, max_cooldown_s=600.0)
HEALTHY = Candidate(2, 2)
ROUTES = [FAILING, HEALTHY]


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _state(url: str, prefix: str) -> tuple[aioredis.Redis, RedisRoutingState]:
    client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=0.2,
                                     socket_connect_timeout=0.2)
    return client, RedisRoutingState(client, prefix=prefix, retry_interval_s=0.3)


async def _routes(state: RedisRoutingState) -> set[int]:
    plan = await state.plan("m", ROUTES, now=time.time())
    return {c.route_id for c in plan.routes}


async def _past_retry_interval(state: RedisRoutingState) -> None:
    """Wait out the retry interval (bounded), so the next call tries Redis again."""
    for _ in range(50):
        if not state._shared.down:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("still inside the retry interval after 1 s")


def test_a_breaker_open_before_a_redis_restart_is_open_after_it(redis_server):
    async def scenario() -> None:
        prefix = f"gwtest:{uuid.uuid4().hex}:"
        (client_a, a), (client_b, b) = _state(redis_server.url, prefix), _state(redis_server.url, prefix)
        for _ in range(2):
            await a.record_failure(FAILING, "http_503", now=time.time())
        # B learns of the open breaker by planning, as every request does.
        assert await _routes(b) == {HEALTHY.route_id}

        redis_server.kill()
        assert await _routes(b) == {HEALTHY.route_id}
        assert b.degraded
        redis_server.start()
        await _past_retry_interval(b)
        assert await _routes(b) == {HEALTHY.route_id}
        assert not b.degraded

        # A process that never saw the breaker finds it open in the restarted Redis.
        client_c, c = _state(redis_server.url, prefix)
        assert await _routes(c) == {HEALTHY.route_id}
        view = (await c.snapshot(ROUTES))[FAILING.route_id]
        assert view.state == "open" and view.consecutive_failures == 2 and view.shared
        assert view.last_error_class == "http_503"
        for client in (client_a, client_b, client_c):
            await client.aclose()

    asyncio.run(scenario())


def test_a_breaker_opened_during_an_outage_is_written_back(redis_server):
    async def scenario() -> None:
        prefix = f"gwtest:{uuid.uuid4().hex}:"
        client_a, a = _state(redis_server.url, prefix)
        assert await _routes(a) == {FAILING.route_id, HEALTHY.route_id}
        redis_server.pause()
        try:
            for _ in range(2):
                await a.record_failure(FAILING, "timeout", now=time.time())
            assert a.degraded and await _routes(a) == {HEALTHY.route_id}
        finally:
            redis_server.resume()
        await _past_retry_interval(a)
        assert await _routes(a) == {HEALTHY.route_id} and not a.degraded
        client_b, b = _state(redis_server.url, prefix)
        assert await _routes(b) == {HEALTHY.route_id}
        for client in (client_a, client_b):
            await client.aclose()

    asyncio.run(scenario())
