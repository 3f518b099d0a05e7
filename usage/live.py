"""Live updates of the spend page's today view and of the operations page over a WebSocket
(`/reports/live?<the page's query>`, `/reports/operations/live?<query>`), served by Django
Channels from gateway/asgi.py.

Who may connect: the page's own people. The socket is authenticated by the Django session
cookie (channels' AuthMiddlewareStack) and refused unless usage.permissions.user_is_finance
holds; its Origin must be one of ALLOWED_HOSTS (channels' AllowedHostsOriginValidator), so
another site cannot open it with the visitor's cookie. A refused socket is closed before it is
accepted (the handshake answers 403).

Fan-out: one `LedgerWatcher` per process reads the ledger's newest id every second through
the database thread pool (gateway.database), whatever the number of sockets, and wakes each
socket when it changes; each socket then renders its page's fragment with the same code as the
page (usage.views report_fragment / operations_fragment) and sends it as
`{"html": ..., "newest": <id>}`. The rendering runs in Channels' sync thread, not in the
database pool: on SQLite that pool is one thread shared with the ledger writer, which a report
must not hold up. No new package and no Redis needed: every process sees the
ledger rows of every process in the database. The operations page also refreshes every
OPERATIONS_REFRESH_S for circuit changes without traffic.
"""
from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import parse_qsl

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.http import QueryDict
from django.urls import path, re_path

from gateway.database import db
from usage.models import UsageRecord
from usage.permissions import user_is_finance

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
OPERATIONS_REFRESH_S = 10.0


def _newest_id() -> int:
    return UsageRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0


class LedgerWatcher:
    """Reads the newest ledger id every `interval_s` while at least one socket listens and
    puts it in each listener's queue when it differs from the last one that listener got (a
    new listener gets the first reading: the socket compares it with the id it read when it
    connected, so a row written between the two is not missed). A queue holds one id: a slow
    socket gets the latest change once, never a backlog. One task per process and loop."""

    def __init__(self, *, interval_s: float = POLL_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._listeners: dict[asyncio.Queue, int | None] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._listeners[queue] = None
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._listeners.pop(queue, None)
        if not self._listeners and self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def _run(self) -> None:
        while self._listeners:
            try:
                current = await db.run(_newest_id)
            except Exception as exc:  # a database hiccup must not end the live updates
                logger.warning("live updates: reading the ledger failed: %s", exc)
                current = None
            if current is not None:
                for queue, last in list(self._listeners.items()):
                    if last != current and queue in self._listeners:
                        if queue.full():
                            queue.get_nowait()
                        queue.put_nowait(current)
                        self._listeners[queue] = current
            await asyncio.sleep(self._interval_s)


watcher = LedgerWatcher()


class LiveConsumer(AsyncWebsocketConsumer):
    """Sends the page's re-rendered fragment each time the ledger grows."""

    page = "report"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not await database_sync_to_async(user_is_finance)(user):
            await self.close()
            return
        query = QueryDict(mutable=True)
        for name, value in parse_qsl(self.scope.get("query_string", b"").decode("latin-1"),
                                     keep_blank_values=True):
            query.appendlist(name, value)
        self.query = query
        self.seen = await db.run(_newest_id)
        await self.accept()
        self.queue = watcher.subscribe()
        self.sender = asyncio.create_task(self._send_updates())

    async def disconnect(self, code) -> None:
        sender = getattr(self, "sender", None)
        if sender is not None:
            sender.cancel()
            watcher.unsubscribe(self.queue)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """Clients send nothing; anything received is ignored."""

    async def _fragment(self) -> str:
        from usage.views import operations_fragment, report_fragment

        if self.page == "operations":
            from gateway.process_views import circuits_view

            circuits = await circuits_view()
            return await database_sync_to_async(operations_fragment)(self.query, circuits)
        return await database_sync_to_async(report_fragment)(self.query)

    async def _send_updates(self) -> None:
        timeout = OPERATIONS_REFRESH_S if self.page == "operations" else None
        while True:
            try:
                newest = await asyncio.wait_for(self.queue.get(), timeout)
                if newest == self.seen:
                    continue
                self.seen = newest
            except TimeoutError:
                newest = None
            try:
                html = await self._fragment()
            except Exception:
                logger.exception("live updates: rendering %s failed", self.page)
                continue
            await self.send(text_data=json.dumps({"html": html, "newest": newest}))


class OperationsLiveConsumer(LiveConsumer):
    page = "operations"


class _NoRoute(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()


websocket_application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
    path("reports/live", LiveConsumer.as_asgi()),
    path("reports/operations/live", OperationsLiveConsumer.as_asgi()),
    re_path(r"", _NoRoute.as_asgi()),
])))
