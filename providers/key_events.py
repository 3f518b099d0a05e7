"""Key changes, told to every serving process (issue 18).

A key change (created, edited, revoked, rotated, its team's limits changed) is one row of the
key change feed (providers.models.KeyChange, written in the change's own transaction by
providers.services.api_key_changes_publish) and, once that commits, one message on the Redis
channel CHANNEL. Each serving process keeps one subscription (KeyChangeListener, started with its
first key lookup) and drops the digests a message names from its key cache at once; it also
reads the feed on every config poll, which covers what the subscription missed (a Redis outage,
a reconnect) and is the only path without Redis. Either way the cost of a change is a few
dictionary operations per process, whatever the number of keys.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import orjson
from django.conf import settings

from gateway.cancellation import reraise_swallowed_cancel
from gateway.redis_client import SyncClient, redis_async, redis_is_cluster, redis_sync
from gateway.shared_state import REDIS_UNREACHABLE
from providers.selectors import KeyChangeInfo

logger = logging.getLogger(__name__)

CHANNEL = "gw:key-changes"
RECONNECT_MAX_S = 5.0
# get_message's wait: how often a quiet subscription checks that it is still connected.
LISTEN_TIMEOUT_S = 1.0


def key_change_message(change: KeyChangeInfo) -> bytes:
    return orjson.dumps({"id": change.id, "digests": list(change.digests),
                         "team": change.team_id})


def key_change_parse(data: bytes | str) -> KeyChangeInfo | None:
    """The change a message carries; None for anything else (logged)."""
    try:
        payload = orjson.loads(data)
        return KeyChangeInfo(id=int(payload["id"]),
                             digests=tuple(str(d) for d in payload.get("digests") or ()),
                             team_id=None if payload.get("team") is None else int(payload["team"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("ignoring a malformed message on %s", CHANNEL)
        return None


@functools.cache
def _publisher(url: str) -> SyncClient | None:
    """One client per Redis URL (from the one factory, gateway.redis_client, so a cluster
    works too) for the process's sync writers (admin, commands, services run on the database
    threads), with a connection pool of its own."""
    return redis_sync(socket_connect_timeout=0.5, socket_timeout=0.5)


def key_change_broadcast(change: KeyChangeInfo) -> None:
    """Publish `change` on CHANNEL when Redis is configured. Never raises: when Redis cannot be
    reached, the feed row (already committed) reaches every process within the poll interval."""
    if not settings.REDIS_URL:
        return
    try:
        _publisher(settings.REDIS_URL).publish(CHANNEL, key_change_message(change))
    except REDIS_UNREACHABLE as exc:
        logger.warning("key change %s not published (%s); the feed carries it", change.id,
                       type(exc).__name__)


class KeyChangeListener:
    """The process's subscription to CHANNEL: `on_change` for every change received,
    `on_subscribed` each time the subscription is (re)established, when messages may have been
    missed. One task per event loop; it reconnects with a capped backoff and never raises."""

    def __init__(self, *, on_change: Callable[[KeyChangeInfo], None],
                 on_subscribed: Callable[[], None]) -> None:
        self._on_change = on_change
        self._on_subscribed = on_subscribed
        self._task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        """Start listening on the running loop unless a listener already runs there."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._listen(settings.REDIS_URL), name="key-changes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _listen(self, url: str) -> None:
        backoff = 0.1
        while True:
            # The read timeout is above get_message's wait: an idle subscription is not a
            # dead one. A cluster client loads its slot map before its first pubsub().
            client = redis_async(max_connections=2, socket_connect_timeout=1.0,
                                 socket_timeout=LISTEN_TIMEOUT_S + 5, health_check_interval=10)
            try:
                if redis_is_cluster():
                    await client.initialize()
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    reraise_swallowed_cancel()
                    self._on_subscribed()
                    backoff = 0.1
                    while True:
                        message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                        reraise_swallowed_cancel()
                        if message is not None and message.get("type") == "message":
                            change = key_change_parse(message["data"])
                            if change is not None:
                                self._on_change(change)
            except REDIS_UNREACHABLE as exc:
                # A stop (the loop closing) that redis-py swallowed must still end the task,
                # or asyncio.run would wait for it for ever.
                reraise_swallowed_cancel()
                logger.warning("key change subscription lost (%s); the feed covers it",
                               type(exc).__name__)
            finally:
                await client.aclose()
            reraise_swallowed_cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)
