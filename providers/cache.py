"""The per-process routing snapshot, reloaded when the config version changes.

The version is polled at most every GATEWAY_CONFIG_POLL_S seconds (one small query), so admin
and `gateway_apply` edits reach running servers within about a second, with no restart. One
reload runs at a time; concurrent requests keep using the previous snapshot meanwhile.

A key created since the last reload is not in the snapshot yet: `key_find` looks such a digest
up in the database (`KeyLookup`) before the request is refused, so a new key works on its
first request on every process, and a revoked one still stops within the poll interval.
An expired key, or a rotated-out secret past its grace period, is refused from the moment it
expires, whichever snapshot or lookup holds it (`KeyInfo.expired`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError

from gateway.database import db
from gateway.errors import ServiceUnavailable
from providers.selectors import (KeyInfo, RoutingSnapshot, api_key_active_get,
                                 config_version_get, routing_snapshot_load)

logger = logging.getLogger(__name__)

# A digest the database did not know is refused without asking again for this long: a burst
# of guesses costs one query per distinct digest, while a key cannot be created under a digest
# someone already sent (the digest is of a random secret).
UNKNOWN_TTL_S = 2.0
MAX_UNKNOWN = 10_000
MAX_FOUND = 1_000


class KeyLookup:
    """Keys looked up by digest, one query per digest at a time (concurrent requests for the
    same digest await the same query), bounded caches both ways:

    - found keys, each kept only while the snapshot it was looked up beside is the current
      one (a reload, which a revocation forces within the poll interval, retires it: the
      reloaded snapshot holds the key, or it was revoked and the next lookup, which reads
      unrevoked keys only, finds nothing);
    - confirmed-unknown digests, for UNKNOWN_TTL_S.
    A database error is raised to every waiter and nothing is cached. `on_found` is called
    when the database knew a key the snapshot did not."""

    def __init__(self, *, on_found: Callable[[], None]) -> None:
        self._on_found = on_found
        self._found: dict[str, tuple[str | None, KeyInfo]] = {}
        self._unknown: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    def clear(self) -> None:
        self._found.clear()
        self._unknown.clear()

    async def find(self, digest: str, *, version: str | None) -> KeyInfo | None:
        """The key with `digest` for a request served from the snapshot of `version`, or None
        when the database confirms there is none (unrevoked). Raises DatabaseError."""
        found = self._found.get(digest)
        if found is not None and found[0] == version:
            return found[1]
        until = self._unknown.get(digest)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._unknown[digest]
        lookup = self._inflight.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(digest, version))
            self._inflight[digest] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(digest, None))
        # Shielded: a waiter whose client left does not cancel the others' query.
        return await asyncio.shield(lookup)

    async def _lookup(self, digest: str, version: str | None) -> KeyInfo | None:
        key = await db.run(api_key_active_get, key_hash=digest)
        if key is None:
            if len(self._unknown) >= MAX_UNKNOWN:
                now = time.monotonic()
                self._unknown = {d: t for d, t in self._unknown.items() if t > now}
                if len(self._unknown) >= MAX_UNKNOWN:
                    self._unknown = {}
            self._unknown[digest] = time.monotonic() + UNKNOWN_TTL_S
        else:
            if len(self._found) >= MAX_FOUND:
                self._found = {}
            self._found[digest] = (version, key)
            self._on_found()
        return key


class SnapshotCache:
    """Bounded by construction: it holds exactly one snapshot (and a bounded KeyLookup)."""

    def __init__(self) -> None:
        self._snapshot: RoutingSnapshot | None = None
        self._checked_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._keys = KeyLookup(on_found=self._recheck)

    def invalidate(self) -> None:
        self._checked_at = 0.0
        self._snapshot = None
        self._keys.clear()

    def _recheck(self) -> None:
        """The next request checks the config version (the snapshot is kept meanwhile)."""
        self._checked_at = 0.0

    async def key_find(self, digest: str, *, snapshot: RoutingSnapshot) -> KeyInfo | None:
        """The unrevoked, unexpired key with `digest`: from `snapshot`, else from the
        database (see KeyLookup). A key found there makes the next request check the config
        version, so the snapshot catches up. An expired key is None, as a revoked one (the
        snapshot's copy is not looked up again: an extended expiry reloads the snapshot).
        Raises DatabaseError."""
        key = snapshot.keys.get(digest)
        if key is None:
            key = await self._keys.find(digest, version=snapshot.version)
        if key is not None and key.expired(datetime.now(UTC)):
            return None
        return key

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
                    raise ServiceUnavailable(
                        "the routing configuration cannot be loaded: the database is unreachable",
                        code="config_unavailable", headers={"retry-after": "5"}) from None
                # Keep serving known keys and routes while the database is unreachable.
                logger.warning("config reload failed; serving the previous snapshot")
            self._checked_at = time.monotonic()
            return self._snapshot


def _fresh_snapshot(previous: RoutingSnapshot | None) -> RoutingSnapshot:
    if previous is not None and config_version_get() == previous.version:
        return previous
    return routing_snapshot_load()


snapshot_cache = SnapshotCache()
