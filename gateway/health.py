"""GET /health (liveness: no database, no network) and GET /health/detailed (database, Redis,
and each provider's routes with circuit state and in-flight count; never a secret)."""
from __future__ import annotations

import time

from django.db import connection
from django.http import HttpRequest, HttpResponse
from redis.asyncio.cluster import RedisCluster

from gateway.clients import client_pool
from gateway.database import db
from gateway.responses import json_response
from gateway.shared_state import REDIS_UNREACHABLE
from providers.cache import snapshot_cache


async def health(request: HttpRequest) -> HttpResponse:
    return json_response({"status": "ok"})


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check(coro) -> dict:
    started = time.monotonic()
    try:
        await coro
    except Exception as exc:  # a health check reports any failure, it never raises
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 2)}


async def health_detailed(request: HttpRequest) -> HttpResponse:
    database = await _check(db.run(_database_ping))
    redis = client_pool.redis()
    if redis is None:
        redis_check = {"ok": True, "configured": False}
    elif isinstance(redis, RedisCluster):
        # Every master answers (a failed one is out of the slot map once its replica took
        # over); replicas are not asked: the gateway does not read from them.
        redis_check = {**await _check(redis.ping(target_nodes=RedisCluster.PRIMARIES)),
                       "configured": True, "cluster": True}
    else:
        redis_check = {**await _check(redis.ping()), "configured": True}
    providers: dict[str, dict] = {}
    try:
        snapshot = await snapshot_cache.get()
    except Exception as exc:  # no snapshot and no database: report, don't crash
        snapshot = None
        database.setdefault("error", type(exc).__name__)
    if snapshot is not None:
        routes = [(model, d) for model, ds in snapshot.deployments.items() for d in ds]
        try:
            views = await client_pool.routing().snapshot([d.candidate for _, d in routes])
        except REDIS_UNREACHABLE:
            views = {}
        for public_model, d in routes:
            view = views.get(d.route_id)
            entry = providers.setdefault(d.provider_name, {"kind": d.kind, "routes": []})
            entry["routes"].append({
                "route_id": d.route_id, "public_model": public_model,
                "upstream_model": d.upstream_model, "weight": d.weight, "priority": d.priority,
                "circuit": view.state if view else "unknown",
                "consecutive_failures": view.consecutive_failures if view else None,
                "last_error_class": view.last_error_class if view else None,
                "last_error_at": view.last_error_at if view else None,
                "open_until": view.opened_until if view else None,
                "in_flight": view.in_flight if view else None,
                "max_inflight": d.max_inflight,
                "shared_state": view.shared if view else False,
            })
    healthy = database["ok"] and redis_check["ok"]
    return json_response({"status": "ok" if healthy else "degraded", "database": database,
                          "redis": redis_check, "providers": providers},
                         status=200 if healthy else 503)
