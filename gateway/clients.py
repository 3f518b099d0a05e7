"""The shared clients of a worker process, one set per event loop: the upstream HTTP pool
(aiohttp), the Redis client, and the routing state built on it.

aiohttp was chosen over httpx by measurement (README: "Upstream HTTP client"). The HTTP session
is never created per request; upstream calls honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY through
`upstream_proxy` (aiohttp's own trust_env would re-read the environment and ~/.netrc on every
request). The Redis client, standalone or a cluster, comes from `gateway.redis_client.redis_async`
with short timeouts and no retries: a slow Redis must not stall requests (routing falls back per
process).
"""
from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment

import aiohttp
import orjson
from django.conf import settings

from gateway.redis_client import AsyncClient, redis_async
from gateway.routing_state import LocalRoutingState, RedisRoutingState, RoutingState
from usage.budgets_redis import RedisBudgets
from usage.ratelimits import LocalRateLimiter, RateLimiter, RedisRateLimiter


@dataclass
class LoopClients:
    http: aiohttp.ClientSession
    redis: AsyncClient | None
    routing: RoutingState
    ratelimiter: RateLimiter
    budgets: RedisBudgets | None


class ClientPool:
    """Bounded by the number of live event loops (normally one per worker process)."""

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClients] = (
            weakref.WeakKeyDictionary())

    def _get(self) -> LoopClients:
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None or clients.http.closed:
            redis = redis_async()
            if redis is not None:
                routing, ratelimiter = RedisRoutingState(redis), RedisRateLimiter(redis)
            else:
                routing, ratelimiter = LocalRoutingState(), LocalRateLimiter()
            clients = LoopClients(http=self._new_session(), redis=redis, routing=routing,
                                  ratelimiter=ratelimiter,
                                  budgets=RedisBudgets(redis) if redis is not None else None)
            self._clients[loop] = clients
        return clients

    @staticmethod
    def _new_session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=60)
        return aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=True,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                          sock_read=settings.GATEWAY_READ_TIMEOUT_S),
        )

    def session(self) -> aiohttp.ClientSession:
        return self._get().http

    def redis(self) -> AsyncClient | None:
        """This loop's shared Redis client (standalone or cluster), None without Redis."""
        return self._get().redis

    def routing(self) -> RoutingState:
        return self._get().routing

    def ratelimiter(self) -> RateLimiter:
        return self._get().ratelimiter

    def budgets(self) -> RedisBudgets | None:
        """Budget reservations shared through Redis; None without Redis (database only)."""
        return self._get().budgets

    def reset_routing_state(self) -> None:
        """Forget this process's routing and rate-limit state (tests; Redis data is not touched)."""
        for clients in list(self._clients.values()):
            if clients.redis is not None:
                clients.routing, clients.ratelimiter = (RedisRoutingState(clients.redis),
                                                        RedisRateLimiter(clients.redis))
                clients.budgets = RedisBudgets(clients.redis)
            else:
                clients.routing, clients.ratelimiter = LocalRoutingState(), LocalRateLimiter()

    async def close(self) -> None:
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.http.close()
            if clients.redis is not None:
                await clients.redis.aclose()


client_pool = ClientPool()


def upstream_proxy(url: str) -> str | None:
    """The proxy URL for an upstream URL (GATEWAY_UPSTREAM_PROXIES, from the environment), or
    None when there is none or NO_PROXY exempts the host."""
    parts = urlsplit(url)
    return _proxy_for(parts.scheme, parts.netloc)


@functools.lru_cache(maxsize=256)
def _proxy_for(scheme: str, netloc: str) -> str | None:
    proxies = settings.GATEWAY_UPSTREAM_PROXIES
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or proxy_bypass_environment(netloc, proxies):
        return None
    return proxy


def timeout_for(provider_timeout_s: float) -> aiohttp.ClientTimeout:
    """Connect timeout from settings; the provider's timeout bounds each read (time to first
    byte, and the gap between stream chunks), capped by GATEWAY_READ_TIMEOUT_S."""
    return aiohttp.ClientTimeout(total=None, connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                 sock_connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                 sock_read=min(provider_timeout_s, settings.GATEWAY_READ_TIMEOUT_S))
