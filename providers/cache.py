"""What each serving process caches of the configuration: the routing snapshot and API keys.

The snapshot (deployments and prices, a few hundred rows) is reloaded when the config version
changes. The version is polled every GATEWAY_CONFIG_POLL_S seconds (one small query), so admin
and `gateway_apply` edits of routes reach running servers within about a second, with no
restart. One reload runs at a time; concurrent requests keep using the previous snapshot.

Both polls run in a task of their own on each serving loop (`Every`), started by the first
request, so no request waits for a database read it did not need (issue 22 names the config
poll among the tail's suspects; on the 2-core machine the A/B difference was within the
run-to-run spread). A request reads them itself only when the task has fallen behind by two
intervals (just started, or the database slow to answer), and on every request when
GATEWAY_CONFIG_POLL_S is 0 (the tests' setting).

Keys are not in the snapshot (issue 18: at 100,000 keys every key change made every process
reload them all, 2.3-2.6 s of CPU and 130 MB each). `KeyCache` looks a digest up when a request
brings it and keeps it in a bounded LRU; a key change evicts the digests it names, through
Redis pub/sub at once and through the key change feed within the poll interval
(providers.key_events), so a new key works on its first request on every process and a revoked
one stops within a second. A key change never reloads the snapshot.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError

from gateway.database import db
from gateway.errors import ServiceUnavailable
from providers.key_events import KeyChangeListener
from providers.selectors import (KeyChangeInfo, KeyInfo, RoutingSnapshot, api_key_active_get,
                                 config_version_get, key_changes_since, routing_snapshot_load)

logger = logging.getLogger(__name__)

# A digest the database did not know is refused without asking again for this long: a burst
# of guesses costs one query per distinct digest, while a key cannot be created under a digest
# someone already sent (the digest is of a random secret); a creation evicts it anyway.
UNKNOWN_TTL_S = 2.0
MAX_UNKNOWN = 10_000
# Feed rows are read from this many ids below the last one seen: a change whose transaction
# took its id before a later one committed is still read (each change is applied once).
FEED_OVERLAP = 64
MAX_APPLIED = 10_000
NEVER = float("-inf")  # a monotonic clock may start near zero
# Older than this many intervals, a request reads the config itself instead of leaving it to
# the polling task: that task has just started, or its reads are slow.
STALE_AFTER_POLLS = 2


class Every:
    """Runs `poll` every GATEWAY_CONFIG_POLL_S seconds in a task of the running loop, started
    by `ensure()` (each request calls it; cheap once the task runs). The task is replaced when
    it belongs to another (closed) loop or the interval changed, and ends when the interval is
    0. An error of one poll is logged and the next one runs; the cancellation of the loop's
    tasks ends it."""

    def __init__(self, poll, what: str) -> None:
        self._poll = poll
        self._what = what
        self._task: asyncio.Task | None = None
        self._interval = 0.0

    def ensure(self) -> None:
        task, interval = self._task, settings.GATEWAY_CONFIG_POLL_S
        if (task is not None and not task.done() and interval == self._interval
                and task.get_loop() is asyncio.get_running_loop()):
            return
        if task is not None and not task.done() and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)
        self._interval = interval
        self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if settings.GATEWAY_CONFIG_POLL_S != interval:
                return  # the next request starts the task anew, when the interval is not 0
            try:
                await self._poll()
            except Exception:
                logger.exception("the %s poll failed; the next one runs in %s s", self._what,
                                 interval)


class KeyCache:
    """API keys by digest, for every request's authentication.

    - A digest not cached is read from the database (`api_key_active_get`, one indexed query
      on a database thread); concurrent requests for the same digest await the same query.
    - Found keys are kept in an LRU of GATEWAY_KEY_CACHE_SIZE entries, each for at most
      GATEWAY_KEY_CACHE_TTL_S (then read again; while the database is unreachable the last
      copy keeps serving). Confirmed-unknown digests are remembered for UNKNOWN_TTL_S.
    - `apply` evicts what a key change names (the listener's messages and the feed's rows,
      each change once); a lookup that a change overtook is answered but not cached.
    - The feed is read every GATEWAY_CONFIG_POLL_S by a task of its own (`Every`); a request
      reads it itself only at the first lookup and when that task is behind. A process that
      could not read it for longer than the feed keeps rows (GATEWAY_KEY_FEED_RETENTION_S), or
      finds it behind the last row it saw, drops every cached key.
    `lookups` counts the database lookups. Expiry is checked per request (`KeyInfo.expired`)."""

    def __init__(self) -> None:
        self._found: OrderedDict[str, tuple[KeyInfo, float]] = OrderedDict()
        self._unknown: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._overtaken: set[str] = set()
        self._feed_seen: int | None = None
        self._feed_checked_at = NEVER
        self._feed_read_at = 0.0
        self._feed_lock: asyncio.Lock | None = None
        self._applied: set[int] = set()
        # Changes up to this id came before what is cached: never applied.
        self._feed_floor = 0
        self._listener = KeyChangeListener(on_change=self.apply, on_subscribed=self._poll_soon)
        self._poller = Every(self._feed_poll, "key change feed")
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._found)

    def clear(self) -> None:
        """Forget every key and the feed position (tests: a fresh database)."""
        self._found.clear()
        self._unknown.clear()
        self._overtaken.update(self._inflight)
        self._feed_seen = None
        self._feed_checked_at = NEVER
        self._applied.clear()
        self._feed_floor = 0

    async def find(self, digest: str) -> KeyInfo | None:
        """The unrevoked, unexpired key with `digest`, or None when the database confirms there
        is none. Raises DatabaseError when it must be asked and cannot be."""
        if settings.REDIS_URL:
            self._listener.ensure_started()
        poll = settings.GATEWAY_CONFIG_POLL_S
        if poll > 0:
            self._poller.ensure()
        now = time.monotonic()
        if now - self._feed_checked_at >= poll * STALE_AFTER_POLLS:
            await self._feed_poll()
            now = time.monotonic()
        entry = self._found.get(digest)
        if entry is not None and entry[1] > now:
            self._found.move_to_end(digest)
            key = entry[0]
        else:
            until = self._unknown.get(digest)
            if until is not None:
                if until > now:
                    return None
                del self._unknown[digest]
            try:
                key = await self._lookup(digest)
            except DatabaseError:
                if entry is None:
                    raise
                key = entry[0]  # stale, but no change evicted it: keep serving it
        if key is not None and key.expired(datetime.now(UTC)):
            return None
        return key

    def apply(self, change: KeyChangeInfo) -> None:
        """Evict what `change` names: its digests, and every key of its team. Idempotent."""
        if change.id <= self._feed_floor or change.id in self._applied:
            return
        if len(self._applied) >= MAX_APPLIED:
            self._applied = set(sorted(self._applied)[MAX_APPLIED // 2:])
        self._applied.add(change.id)
        for digest in change.digests:
            self._found.pop(digest, None)
            self._unknown.pop(digest, None)
            if digest in self._inflight:
                self._overtaken.add(digest)
        if change.team_id is not None:
            for digest in [d for d, (key, _) in self._found.items() if key.team_id == change.team_id]:
                del self._found[digest]
            self._overtaken.update(self._inflight)

    async def stop(self) -> None:
        await self._listener.stop()

    def _poll_soon(self) -> None:
        """(Re)subscribed: what was published meanwhile is in the feed; the next request reads
        it."""
        self._feed_checked_at = NEVER

    async def _lookup(self, digest: str) -> KeyInfo | None:
        lookup = self._inflight.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._query(digest))
            self._inflight[digest] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(digest, None))
        # Shielded: a waiter whose client left does not cancel the others' query.
        return await asyncio.shield(lookup)

    async def _query(self, digest: str) -> KeyInfo | None:
        self.lookups += 1
        try:
            key = await db.run(api_key_active_get, key_hash=digest)
        finally:
            overtaken = digest in self._overtaken
            self._overtaken.discard(digest)
        if overtaken or self._feed_seen is None:
            return key
        now = time.monotonic()
        if key is None:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown = {d: t for d, t in self._unknown.items() if t > now}
                if len(self._unknown) >= MAX_UNKNOWN:
                    self._unknown = {}
            self._unknown[digest] = now + UNKNOWN_TTL_S
        else:
            self._found[digest] = (key, now + settings.GATEWAY_KEY_CACHE_TTL_S)
            self._found.move_to_end(digest)
            while len(self._found) > settings.GATEWAY_KEY_CACHE_SIZE:
                self._found.popitem(last=False)
        return key

    async def _feed_poll(self) -> None:
        if self._feed_lock is None:
            self._feed_lock = asyncio.Lock()
        if self._feed_seen is not None and self._feed_lock.locked():
            return  # another request is reading it; this one goes on with what is cached
        checked_at = self._feed_checked_at
        async with self._feed_lock:
            if self._feed_checked_at != checked_at:
                return  # read while this request waited
            try:
                head, changes = await db.run(key_changes_since, after=self._feed_seen,
                                             overlap=FEED_OVERLAP)
            except DatabaseError:
                self._feed_checked_at = time.monotonic()
                logger.warning("the key change feed cannot be read; serving the cached keys")
                return
            now = time.monotonic()
            if (self._feed_seen is None or head < self._feed_seen
                    or now - self._feed_read_at > settings.GATEWAY_KEY_FEED_RETENTION_S):
                # Nothing tells what changed before this point (first read, a feed emptied or
                # restored, rows pruned before this process read them): re-read every key.
                self._found.clear()
                self._unknown.clear()
                self._overtaken.update(self._inflight)
                self._applied.clear()
                self._feed_floor = head
            for change in changes:
                self.apply(change)
            self._feed_seen = head
            self._applied = {i for i in self._applied if i > head - FEED_OVERLAP}
            self._feed_read_at = self._feed_checked_at = now


class SnapshotCache:
    """Bounded by construction: it holds exactly one snapshot. `loads` counts the reloads."""

    def __init__(self) -> None:
        self._snapshot: RoutingSnapshot | None = None
        self._checked_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._poller = Every(self._poll, "config version")
        self.loads = 0

    def invalidate(self) -> None:
        self._checked_at = 0.0
        self._snapshot = None

    async def get(self) -> RoutingSnapshot:
        snapshot = self._snapshot
        poll = settings.GATEWAY_CONFIG_POLL_S
        if poll > 0:
            self._poller.ensure()
        if snapshot is not None and time.monotonic() - self._checked_at < poll * STALE_AFTER_POLLS:
            return snapshot
        return await self._reload()

    async def _poll(self) -> None:
        if self._snapshot is not None:  # else the next request loads it
            await self._reload()

    async def _reload(self) -> RoutingSnapshot:
        """The snapshot after reading the version (and the routes, when it changed); one read
        at a time, and while one runs the others answer the previous snapshot."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._snapshot is not None and self._lock.locked():
            return self._snapshot
        checked_at = self._checked_at
        async with self._lock:
            if self._snapshot is not None and self._checked_at != checked_at:
                return self._snapshot  # read while this call waited
            try:
                fresh = await db.run(_fresh_snapshot, previous=self._snapshot)
            except DatabaseError:
                if self._snapshot is None:
                    raise ServiceUnavailable(
                        "the routing configuration cannot be loaded: the database is unreachable",
                        code="config_unavailable", headers={"retry-after": "5"}) from None
                # Keep serving known routes while the database is unreachable.
                logger.warning("config reload failed; serving the previous snapshot")
            else:
                if fresh is not self._snapshot:
                    self.loads += 1
                self._snapshot = fresh
            self._checked_at = time.monotonic()
            return self._snapshot


def _fresh_snapshot(previous: RoutingSnapshot | None) -> RoutingSnapshot:
    if previous is not None and config_version_get() == previous.version:
        return previous
    return routing_snapshot_load()


snapshot_cache = SnapshotCache()
key_cache = KeyCache()
