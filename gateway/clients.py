"""The one shared upstream HTTP client pool (aiohttp), one session per event loop.

aiohttp was chosen over httpx by measurement (README: "Upstream HTTP client"). The session honours
HTTPS_PROXY/NO_PROXY (trust_env) and is never created per request.
"""
from __future__ import annotations

import asyncio
import weakref

import aiohttp
import orjson
from django.conf import settings


class ClientPool:
    """Bounded by the number of live event loops (normally one per worker process)."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary())

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                             keepalive_timeout=60, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(
                connector=connector, trust_env=True, auto_decompress=True,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                timeout=aiohttp.ClientTimeout(total=None, connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                              sock_read=settings.GATEWAY_READ_TIMEOUT_S),
            )
            self._sessions[loop] = session
        return session

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()


client_pool = ClientPool()


def timeout_for(provider_timeout_s: float) -> aiohttp.ClientTimeout:
    """Connect timeout from settings; the provider's timeout bounds each read (time to first
    byte, and the gap between stream chunks), capped by GATEWAY_READ_TIMEOUT_S."""
    return aiohttp.ClientTimeout(total=None, connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                 sock_connect=settings.GATEWAY_CONNECT_TIMEOUT_S,
                                 sock_read=min(provider_timeout_s, settings.GATEWAY_READ_TIMEOUT_S))
