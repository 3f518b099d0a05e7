"""A cancellation that arrives while routing state is read from Redis must not be lost."""
from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis

from gateway.routing import Candidate
from gateway.routing_state import RedisRoutingState

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.mark.asyncio
async def test_a_cancel_requested_during_a_redis_call_is_raised():
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError:
        pytest.skip("no Redis")
    state = RedisRoutingState(client, prefix=f"gw:test-cancel-{os.getpid()}:")
    candidates = [Candidate(route_id=1, provider_id=1, weight=1)]

    planned = asyncio.Event()

    async def plan_forever():
        while True:
            await state.plan("m", candidates, now=0.0)
            planned.set()

    task = asyncio.create_task(plan_forever())
    # Once a plan has come back, the task is always inside the next one's Redis call when this
    # task runs (a plan suspends only there), so that is where the cancel lands.
    await asyncio.wait_for(planned.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    keys = [k async for k in client.scan_iter(f"gw:test-cancel-{os.getpid()}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
