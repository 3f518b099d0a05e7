"""The provider page's circuit panel reads the shared breaker state through the one Redis client
factory (gateway.redis_client), from a Redis of the test's own."""
from __future__ import annotations

import asyncio
import time

import pytest

from gateway.redis_client import redis_async
from gateway.routing_state import RedisRoutingState
from gateway.tests.redis_server import RedisServer
from providers.admin import circuit_views
from providers.models import ModelRoute, Provider
from providers.selectors import routing_snapshot_load


@pytest.fixture
def redis_url(settings):
    server = RedisServer()
    server.start()
    settings.REDIS_URL = server.url
    yield server.url
    server.stop()


@pytest.mark.django_db
def test_circuit_views_show_the_shared_breaker_a_failing_route_opened(redis_url):
    provider = Provider.objects.create(name="flaky", kind="openai", base_url="http://127.0.0.1:9/v1",
                                       breaker_failures=2)
    ModelRoute.objects.create(provider=provider, public_model="m", upstream_model="up-m")
    deployment, = routing_snapshot_load().deployments["m"]

    async def fail_twice() -> None:
        client = redis_async(max_connections=4)
        try:
            state = RedisRoutingState(client)
            for _ in range(2):
                await state.record_failure(deployment.candidate, "server_error", now=time.time())
        finally:
            await client.aclose()

    views, note = circuit_views(provider)
    assert [(label, v.state, v.consecutive_failures, v.shared) for label, v in views] == [
        ("m → up-m", "closed", 0, True)]
    asyncio.run(fail_twice())
    views, note = circuit_views(provider)
    assert [(label, v.state, v.consecutive_failures, v.last_error_class) for label, v in views] == [
        ("m → up-m", "open", 2, "server_error")]


@pytest.mark.django_db
def test_circuit_views_say_why_they_cannot_be_seen_without_redis(settings):
    settings.REDIS_URL = ""
    provider = Provider.objects.create(name="solo", kind="openai", base_url="http://127.0.0.1:9/v1")
    assert circuit_views(provider) == (
        None, "per-process state: not visible from the admin (set REDIS_URL to share it)")
