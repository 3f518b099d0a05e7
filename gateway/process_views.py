"""The circuit breakers as each serving process sees them, for the operations page
(usage.views, usage.live).

Each serving process writes its view of every route's breaker to Redis every few seconds
(`process_view_announcer`, started on ASGI startup) as one field of the hash
`gw:ops:processes` (one key, so it works on a Redis Cluster too, without SCAN or cross-slot
reads), stamped with the time; views older than ANNOUNCE_TTL_MS are dropped when read, so a
process that stops drops out. With Redis that view is the shared breaker state, or the
process's own one while Redis was unreachable for it (`degraded`); the page lists every live
process's view. Without Redis there is one process to show: this one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid

from redis.exceptions import RedisError

from gateway.cancellation import reraise_swallowed_cancel
from gateway.clients import client_pool
from providers.cache import snapshot_cache

logger = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
ANNOUNCE_KEY = "gw:ops:processes"
ANNOUNCE_INTERVAL_S = 5.0
ANNOUNCE_TTL_MS = 15_000


async def _routes() -> list[tuple[str, object]]:
    snapshot = await snapshot_cache.get()
    return [(model, d) for model, ds in snapshot.deployments.items() for d in ds]


async def process_view(routing) -> dict:
    """This process's view of every configured route's breaker (`routing`: its RoutingState)."""
    routes = await _routes()
    views = await routing.snapshot([d.candidate for _, d in routes])
    out = []
    for model, d in routes:
        v = views.get(d.route_id)
        out.append({"route_id": d.route_id, "provider": d.provider_name, "model": model,
                    "upstream_model": d.upstream_model,
                    "state": v.state if v else "unknown",
                    "failures": v.consecutive_failures if v else None,
                    "last_error": v.last_error_class if v else None,
                    "open_until": v.opened_until if v else None,
                    "in_flight": v.in_flight if v else None, "max_inflight": d.max_inflight})
    return {"process": PROCESS_ID, "degraded": bool(getattr(routing, "degraded", False)),
            "shared": any(v.shared for v in views.values()), "at": time.time(), "routes": out}


async def process_view_announce(redis, routing, *, process: str = PROCESS_ID) -> dict:
    """Write this process's view to Redis (the hash's field `process`) and return it. The
    hash expires ANNOUNCE_TTL_MS after the last announcement of any process."""
    view = {**await process_view(routing), "process": process}
    pipe = redis.pipeline(transaction=False)
    pipe.hset(ANNOUNCE_KEY, process, json.dumps(view))
    pipe.pexpire(ANNOUNCE_KEY, ANNOUNCE_TTL_MS)
    await pipe.execute()
    return view


async def process_views(redis, *, now: float | None = None) -> list[dict]:
    """Every live process's last announced view (announced within ANNOUNCE_TTL_MS), by
    process id; older ones are removed."""
    now = time.time() if now is None else now
    views, stale = [], []
    for field_name, value in (await redis.hgetall(ANNOUNCE_KEY)).items():
        view = json.loads(value)
        if now - view.get("at", 0) > ANNOUNCE_TTL_MS / 1000:
            stale.append(field_name)
        else:
            views.append(view)
    if stale:
        await redis.hdel(ANNOUNCE_KEY, *stale)
    return sorted(views, key=lambda v: v["process"])


async def process_view_announcer() -> None:
    """Announce this process's view every ANNOUNCE_INTERVAL_S while it runs (a task started
    on ASGI startup, gateway/asgi.py); nothing to do without Redis."""
    while True:
        redis = client_pool.redis()
        if redis is None:
            return
        try:
            await process_view_announce(redis, client_pool.routing())
        except (RedisError, OSError) as exc:
            logger.debug("operations: could not announce this process: %s", exc)
        except Exception:  # the page's circuit list must never take the process down
            logger.exception("operations: announcing this process failed")
        reraise_swallowed_cancel()  # a stop redis-py swallowed still ends the loop
        await asyncio.sleep(ANNOUNCE_INTERVAL_S)


async def circuits_view() -> dict:
    """The circuit list of the page: every live process's view where Redis is configured (this
    process announces itself first, so it is always in it), else this process's own."""
    redis = client_pool.redis()
    routing = client_pool.routing()
    if redis is None:
        return {"redis": False, "processes": [await process_view(routing)], "this": PROCESS_ID}
    try:
        await process_view_announce(redis, routing)
        processes = await process_views(redis)
    except (RedisError, OSError):
        return {"redis": True, "unreachable": True, "processes": [await process_view(routing)],
                "this": PROCESS_ID}
    return {"redis": True, "processes": processes, "this": PROCESS_ID}
