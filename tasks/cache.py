"""The per-process task table, reloaded with the routing config.

Task writes (admin, `gateway_apply`) bump the config version like every routing write, so the
table is kept for one routing snapshot version and reloaded when the snapshot's version changes:
edits reach running servers within GATEWAY_CONFIG_POLL_S, with no query per request.
"""
from __future__ import annotations

import asyncio

from gateway.database import db
from providers.selectors import RoutingSnapshot
from tasks.selectors import TaskInfo, task_table_load

_UNLOADED = object()


class TaskCache:
    """Bounded by construction: one table, for one config version."""

    def __init__(self) -> None:
        self._version: object = _UNLOADED
        self._tasks: dict[str, TaskInfo] = {}
        self._lock: asyncio.Lock | None = None

    def invalidate(self) -> None:
        self._version = _UNLOADED

    async def get(self, snapshot: RoutingSnapshot) -> dict[str, TaskInfo]:
        """The tasks as of `snapshot`'s config version."""
        if self._version == snapshot.version:
            return self._tasks
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._version != snapshot.version:
                self._tasks = await db.run(task_table_load)
                self._version = snapshot.version
            return self._tasks


task_cache = TaskCache()
