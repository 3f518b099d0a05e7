"""GCRA limits, per process and shared through Redis (skipped without a reachable Redis)."""
from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis.asyncio as aioredis

from usage.ratelimits import Limit, LocalRateLimiter, RedisRateLimiter

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def _limiters():
    local = LocalRateLimiter()
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        if "REDIS_URL" in os.environ:
            raise
        return [local], None
    return [local, RedisRateLimiter(client, prefix=f"gw:test-rl:{uuid.uuid4().hex}:")], client


def test_limits_are_charged_all_or_none():
    async def scenario() -> None:
        limiters, client = await _limiters()
        for limiter in limiters:
            rpm, tpm = Limit("rpm:1", 10, 1), Limit("tpm:1", 100, 90)
            assert await limiter.acquire_all([rpm, tpm]) is None
            # TPM has 10 left: a 20-token request is refused by TPM, and RPM is not charged.
            refusal = await limiter.acquire_all([rpm, Limit("tpm:1", 100, 20)])
            assert refusal is not None and refusal.name == "tpm:1" and refusal.wait_s > 0
            for _ in range(9):
                assert await limiter.acquire_all([rpm]) is None
            refusal = await limiter.acquire_all([rpm])
            assert refusal is not None and refusal.name == "rpm:1"
            # 60 s / 10 per minute: one request fits again after ~6 s.
            assert 5 < refusal.wait_s <= 6.01
        if client is not None:
            await client.aclose()

    asyncio.run(scenario())


def test_adjust_refunds_without_refusing():
    async def scenario() -> None:
        limiters, client = await _limiters()
        for limiter in limiters:
            assert await limiter.acquire("tpm:2", per_minute=100, cost=100) is None
            assert await limiter.acquire("tpm:2", per_minute=100, cost=50) is not None
            await limiter.adjust("tpm:2", per_minute=100, delta=-60)
            assert await limiter.acquire("tpm:2", per_minute=100, cost=50) is None
        if client is not None:
            await client.aclose()

    asyncio.run(scenario())
