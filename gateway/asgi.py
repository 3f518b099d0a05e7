"""ASGI entry point: `uvicorn gateway.asgi:application` (production and `make run`), or
`daphne gateway.asgi:application`. One app serves HTTP and WebSocket: `websocket` scopes go to
the Channels URLRouter of gateway.realtime (`/v1/realtime`), or, under /reports/, to the
reports' live updates (usage.live, session-authenticated), behind the same guards.

Static files (the admin's CSS/JS) are served by Django's ASGI static handler, which only
intercepts paths under STATIC_URL; a reverse proxy may serve `collectstatic` output instead.
On startup (ASGI lifespan) the reaper of dead processes' request intents starts
(usage.intents.intents_reaper). On shutdown, the server stops accepting requests and lets
in-flight ones end; then background drains of disconnected streams and pending ledger writes
are awaited, bounded by SHUTDOWN_GRACE_S, so their ledger rows are written before the process
exits.

The startup heap is moved out of the garbage collector's sight (gc.freeze) twice: once the app is
imported, and after the first FREEZE_AFTER_REQUESTS API requests (which build the routing
snapshot, the model catalog and the clients). A full collection then scans only what requests
made since, instead of every module, model and catalog object (about 140,000): on the busy
2-core bench machine the gateway's full collections under load paused it up to 225 ms before,
31 ms after (bench/README.md, issue 22).
"""
import asyncio
import gc
import io
import logging
import os
import threading

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

django_application = get_asgi_application()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from gateway.asgi_guards import Guards, StalledClientLogFilter  # noqa: E402
from gateway.clients import client_pool  # noqa: E402
from gateway.ledger import ledger_writer  # noqa: E402
from gateway.realtime.routing import websocket_application  # noqa: E402
from gateway.streaming import drainer  # noqa: E402
from usage.intents import intents_reaper  # noqa: E402
from usage.live import websocket_application as reports_websocket_application  # noqa: E402
from gateway.process_views import process_view_announcer  # noqa: E402

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 30.0

# The proxy paths get a handler of their own whose only middleware is native async: Django's
# stock middleware (sessions, CSRF, auth, messages …) runs each hook through sync_to_async, a
# thread hop per hook per request, and the API views use none of it. Admin, reports, chat
# pages and the DRF API keep the full chain.
API_PATHS = ("/v1/", "/api/tasks/", "/api/chat/", "/health", "/metrics")
API_MIDDLEWARE = ["gateway.middleware.RequestIdMiddleware"]
FREEZE_AFTER_REQUESTS = 200


class _HeapFreezer:
    """gc.freeze() once, after `after` API requests have ended: what the first requests loaded
    (routing snapshot, catalog, pools) stays for the process's life, so full collections need
    not scan it. freeze() itself is a list splice; no collection runs on the request's path (a
    cycle that was garbage at that moment is kept, once)."""

    def __init__(self, after: int) -> None:
        self.left = after
        self.frozen = threading.Event()

    def request_ended(self) -> None:
        if self.left:
            self.left -= 1
            if not self.left:
                gc.freeze()
                self.frozen.set()


heap_freezer = _HeapFreezer(FREEZE_AFTER_REQUESTS)


class ApiHandler(ASGIHandler):
    """Django's ASGI handler without the per-request thread hops the API paths do not need.

    The stock `handle` sends `request_started` and closes the response through
    `sync_to_async` (each a thread hop, to recycle database connections of the request's
    thread); the API views never touch the ORM from the request's context (their database work
    runs on gateway.database's own threads, which recycle their connections themselves), so
    here the signal is skipped and the response is closed inline. The body is read into memory
    (gateway.asgi_guards has already bounded its size). Disconnect handling is Django's: the
    view's task is cancelled when the client leaves."""

    def __init__(self, middleware: list[str]) -> None:
        original = settings.MIDDLEWARE
        settings.MIDDLEWARE = middleware
        try:
            super().__init__()
        finally:
            settings.MIDDLEWARE = original

    async def handle(self, scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body_file = io.BytesIO(b"".join(chunks))
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass
            return response

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        await asyncio.wait((listener, worker), return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, worker):
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if not worker.cancelled() and worker.exception() is None:
            worker.result().close()
        if heap_freezer.left:
            heap_freezer.request_ended()


api_application = ApiHandler(API_MIDDLEWARE)
site_application = ASGIStaticFilesHandler(django_application)


async def _route(scope, receive, send):
    if scope["type"] == "websocket":
        if scope.get("path", "").startswith("/reports/"):
            return await reports_websocket_application(scope, receive, send)
        return await websocket_application(scope, receive, send)
    if scope["type"] == "http" and scope.get("path", "").startswith(API_PATHS):
        return await api_application(scope, receive, send)
    return await site_application(scope, receive, send)


http_application = Guards(_route, host_checked=API_PATHS)
logging.getLogger("uvicorn.error").addFilter(StalledClientLogFilter())
gc.collect()
gc.freeze()


async def _finish_background_work() -> None:
    try:
        async with asyncio.timeout(SHUTDOWN_GRACE_S):
            await drainer.wait()
            await ledger_writer.drain()
    except TimeoutError:
        logger.error("shutdown: background ledger work did not finish in %ss", SHUTDOWN_GRACE_S)
    await client_pool.close()


async def application(scope, receive, send):
    if scope["type"] != "lifespan":
        return await http_application(scope, receive, send)
    reaper: asyncio.Task | None = None
    announcer: asyncio.Task | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            reaper = asyncio.create_task(intents_reaper())
            # This process's circuit view for the operations page (nothing without Redis).
            announcer = asyncio.create_task(process_view_announcer())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for task in (reaper, announcer):
                if task is not None:
                    task.cancel()
            await _finish_background_work()
            await send({"type": "lifespan.shutdown.complete"})
            return
