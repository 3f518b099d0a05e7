"""Sync database work for the async proxy path, on a small fixed pool of threads.

Django's ASGI handler runs `sync_to_async` calls of each request in a thread of its own, so
with persistent connections every concurrent request would open (and strand) a database
connection. The proxy's few database calls (config reload, budget reservation, idempotency,
the ledger write) run here instead: a bounded pool, one long-lived connection per thread.
SQLite gets one thread (it serialises writers anyway); other databases a handful.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import DatabaseError, connections

T = TypeVar("T")

MAX_THREADS = 8


class DatabaseExecutor:
    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            sqlite = connections["default"].vendor == "sqlite"
            self._executor = ThreadPoolExecutor(max_workers=1 if sqlite else MAX_THREADS,
                                                thread_name_prefix="gateway-db")
        return self._executor

    async def run(self, func: Callable[..., T], /, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), functools.partial(_call, func, kwargs))


def _call(func: Callable[..., T], kwargs: dict) -> T:
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()
    try:
        return func(**kwargs)
    except DatabaseError:
        # A broken connection must not poison this thread's next call.
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.is_usable():
                conn.close()
        raise


db = DatabaseExecutor()
