"""The per-process routing snapshot, reloaded when the config version changes.

The version is polled at most every GATEWAY_CONFIG_POLL_S seconds (one small query), so admin
and `gateway_apply` edits reach running servers within about a second, with no restart. One
reload runs at a time; concurrent requests keep using the previous snapshot meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings
from django.db import DatabaseError

from gateway.database import db
from providers.selectors import RoutingSnapshot, config_version_get, routing_snapshot_load

logger = logging.getLogger(__name__)


class SnapshotCache:
    """Bounded by construction: it holds exactly one snapshot."""

    def __init__(self) -> None:
        self._snapshot: RoutingSnapshot | None = None
        self._checked_at = 0.0
        self._lock: asyncio.Lock | None = None

    def invalidate(self) -> None:
        self._checked_at = 0.0
        self._snapshot = None

    async def get(self) -> RoutingSnapshot:
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - self._checked_at < settings.GATEWAY_CONFIG_POLL_S:
            return snapshot
        if self._lock is None:
            self._lock = asyncio.Lock()
        if snapshot is not None and self._lock.locked():
            return snapshot
        async with self._lock:
            if self._snapshot is not None and time.monotonic() - self._checked_at < settings.GATEWAY_CONFIG_POLL_S:
                return self._snapshot
            try:
                self._snapshot = await db.run(_fresh_snapshot, previous=self._snapshot)
            except DatabaseError:
                if self._snapshot is None:
                    raise
                # Keep serving known keys and routes while the database is unreachable.
                logger.warning("config reload failed; serving the previous snapshot")
            self._checked_at = time.monotonic()
            return self._snapshot


def _fresh_snapshot(previous: RoutingSnapshot | None) -> RoutingSnapshot:
    if previous is not None and config_version_get() == previous.version:
        return previous
    return routing_snapshot_load()


snapshot_cache = SnapshotCache()
