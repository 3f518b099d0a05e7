"""The fakes' one way to serve an aiohttp app on loopback: a free port, its own event loop in a
daemon thread."""
from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


def serve_in_thread(app: web.Application, *, name: str) -> tuple[int, asyncio.AbstractEventLoop]:
    """Serve `app` on 127.0.0.1 from a thread called `name`; returns (port, the thread's loop)
    once it listens (waiting up to 10 s)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, name=name, daemon=True).start()
    ready.wait(10)
    return sock.getsockname()[1], loop


def this_database_url() -> str:
    """DATABASE_URL for a gateway subprocess that must share this test's database (SQLite's
    file, or the MySQL/MariaDB test database CI runs on)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return (f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 3306}/{db['NAME']}")
