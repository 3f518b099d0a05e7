"""ASGI entry point: `uvicorn gateway.asgi:application` (production) or daphne (runserver).

Static files (the admin's CSS/JS) are served by Django's ASGI static handler, which only
intercepts paths under STATIC_URL; a reverse proxy may serve `collectstatic` output instead.
On shutdown (ASGI lifespan), the server stops accepting requests and lets in-flight ones end;
then background drains of disconnected streams and pending ledger writes are awaited, bounded
by SHUTDOWN_GRACE_S, so their ledger rows are written before the process exits.
"""
import asyncio
import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

django_application = get_asgi_application()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from gateway.asgi_guards import Guards  # noqa: E402
from gateway.clients import client_pool  # noqa: E402
from gateway.proxy import ledger_writer  # noqa: E402
from gateway.streaming import drainer  # noqa: E402

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 30.0

static_application = Guards(ASGIStaticFilesHandler(django_application))


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
        return await static_application(scope, receive, send)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _finish_background_work()
            await send({"type": "lifespan.shutdown.complete"})
            return
