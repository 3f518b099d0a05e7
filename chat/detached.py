"""Writes that must outlive the request task (a chat answer stored while its client
disconnects)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class DetachedWrites:
    """Runs writes that must outlive the request task (a chat answer stored while its client
    disconnects). Keeps strong references until each is done; bounded by the requests that
    start them."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task] = set()

    def start(self, write: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def run(self, write: Awaitable[Any]) -> Any:
        """Start `write` and wait for it; cancelling the waiter does not cancel the write."""
        return await asyncio.shield(self.start(write))

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


detached_writes = DetachedWrites()
