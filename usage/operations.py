"""Reads for the operations page: latency and time-to-first-token percentiles and error rates
per provider and model by UTC hour, and the circuit breakers as each serving process sees them.

Hours come from the hourly rollup (HourlyOperations, filled with DailyUsage by
usage.rollups.usage_rollup), except the current and the previous hour (the rollup of the day
may not have caught up with them yet) and any day the rollup has not run for: those are
counted from the ledger by the same function the rollup uses. Percentiles are interpolated
from fixed latency buckets (usage.rollups.LATENCY_EDGES_MS), so a p95 is exact to within its
bucket, never read from single rows.

Circuits: each serving process writes its view of every route's breaker to Redis every few
seconds (`process_view_announce`, started on ASGI startup) as one field of the hash
`gw:ops:processes` (one key, so it works on a Redis Cluster too, without SCAN or cross-slot
reads), stamped with the time; views older than ANNOUNCE_TTL_MS are dropped when read, so a
process that stops drops out. With Redis that view is the shared breaker
state, or the process's own one while Redis was unreachable for it (`degraded`); the page
lists every live process's view. Without Redis there is one process to show: this one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.utils import timezone

from usage.charts import Series, lines
from usage.models import HourlyOperations
from usage.rollups import (
    LATENCY_EDGES_MS, OperationsTotals, day_bounds, operations_hours, percentile_from_buckets,
)

logger = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
ANNOUNCE_KEY = "gw:ops:processes"
ANNOUNCE_INTERVAL_S = 5.0
ANNOUNCE_TTL_MS = 15_000
# Series drawn per chart (the busiest provider/model pairs); the table lists them all.
CHART_SERIES = 8


@dataclass(slots=True)
class OperationsGroup:
    provider: str
    model: str
    hours: dict[datetime, OperationsTotals] = field(default_factory=dict)
    total: OperationsTotals = field(default_factory=OperationsTotals)

    @property
    def label(self) -> str:
        return f"{self.provider or '(none)'} · {self.model}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _rate(errors: int, requests: int) -> float | None:
    return errors / requests if requests else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def operations_choices() -> dict[str, list[tuple[str, str]]]:
    """Providers and models the hourly rollup and the configuration know."""
    from providers.models import ModelRoute, Provider

    providers = set(Provider.objects.values_list("name", flat=True))
    rolled = HourlyOperations.objects.order_by()
    providers |= set(rolled.values_list("provider_name", flat=True).distinct())
    models = set(ModelRoute.objects.values_list("public_model", flat=True).distinct().order_by())
    models |= set(rolled.values_list("public_model", flat=True).distinct())
    return {"provider": [(p, p) for p in sorted(providers - {""})],
            "model": [(m, m) for m in sorted(models - {""})]}


def operations_groups(*, start: datetime, end: datetime, providers: Sequence[str] = (),
                      models: Sequence[str] = (), now: datetime | None = None
                      ) -> dict[tuple[str, str], OperationsGroup]:
    """Hourly totals per (provider, model) of the UTC hours in [start, end) (module docstring:
    which hours come from the rollup and which from the ledger)."""
    now = now or timezone.now()
    hour = now.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    recent = hour - timedelta(hours=1)
    rolled = HourlyOperations.objects.filter(hour__gte=start, hour__lt=min(end, recent))
    if providers:
        rolled = rolled.filter(provider_name__in=providers)
    if models:
        rolled = rolled.filter(public_model__in=models)
    found: dict[tuple, OperationsTotals] = {}
    for r in rolled.order_by():
        found[(r.hour, r.provider_name, r.public_model)] = OperationsTotals(
            requests=r.requests, errors=r.errors, latency_sum_ms=r.latency_sum_ms,
            latency_buckets=list(r.latency_buckets), ttft_count=r.ttft_count,
            ttft_sum_ms=r.ttft_sum_ms, ttft_buckets=list(r.ttft_buckets))
    # Days of the range with no rollup row at all (beat not running): from the ledger.
    rolled_days = {h.date() for h in HourlyOperations.objects.filter(hour__gte=start, hour__lt=end)
                   .values_list("hour", flat=True).order_by()}
    spans = [(max(start, recent), end)] if end > recent else []
    day = start.astimezone(dt_timezone.utc).date()
    while day_bounds(day)[0] < min(end, recent):
        if day not in rolled_days:
            day_start, day_end = day_bounds(day)
            spans.append((max(start, day_start), min(end, recent, day_end)))
        day += timedelta(days=1)
    for span_start, span_end in spans:
        for (hour, provider, model), totals in operations_hours(span_start, span_end).items():
            if (providers and provider not in providers) or (models and model not in models):
                continue
            found[(hour, provider, model)] = totals
    groups: dict[tuple[str, str], OperationsGroup] = {}
    for (hour, provider, model), totals in found.items():
        group = groups.setdefault((provider, model), OperationsGroup(provider, model))
        group.hours[hour] = totals
        group.total.add(totals)
    return groups


def operations_report(*, start: datetime, end: datetime, providers: Sequence[str] = (),
                      models: Sequence[str] = (), now: datetime | None = None) -> dict:
    """The operations page's table (one row per provider and model over the range) and
    hourly charts (latency p50/p95, TTFT p50/p95, error rate) of the busiest pairs."""
    groups = operations_groups(start=start, end=end, providers=providers, models=models, now=now)
    ranked = sorted(groups.values(), key=lambda g: (-g.total.requests, g.provider, g.model))
    hours = []
    at = start
    while at < end:
        hours.append(at)
        at += timedelta(hours=1)
    labels = [h.strftime("%m-%d %H:00") for h in hours]
    rows = []
    for g in ranked:
        t = g.total
        rows.append({
            "provider": g.provider or "(none)", "model": g.model, "requests": t.requests,
            "errors": t.errors, "error_rate": _pct(_rate(t.errors, t.requests)),
            "latency_p50": _ms(percentile_from_buckets(t.latency_buckets, 0.5)),
            "latency_p95": _ms(percentile_from_buckets(t.latency_buckets, 0.95)),
            "ttft_p50": _ms(percentile_from_buckets(t.ttft_buckets, 0.5)),
            "ttft_p95": _ms(percentile_from_buckets(t.ttft_buckets, 0.95)),
            "ttft_count": t.ttft_count})

    def series_of(metric) -> list[Series]:
        return [Series(g.label, [metric(g.hours[h]) if h in g.hours else None for h in hours])
                for g in ranked[:CHART_SERIES]]

    def ms_chart(buckets: str, q: float) -> dict:
        return lines(labels=labels, fmt=_ms, series=series_of(
            lambda t: percentile_from_buckets(getattr(t, buckets), q)))

    charts = [
        {"id": "latency-p50", "title": "Latency p50", "chart": ms_chart("latency_buckets", 0.5)},
        {"id": "latency-p95", "title": "Latency p95", "chart": ms_chart("latency_buckets", 0.95)},
        {"id": "ttft-p50", "title": "Time to first token p50",
         "chart": ms_chart("ttft_buckets", 0.5)},
        {"id": "ttft-p95", "title": "Time to first token p95",
         "chart": ms_chart("ttft_buckets", 0.95)},
        {"id": "error-rate", "title": "Error rate", "chart": lines(
            labels=labels, fmt=_pct, series=series_of(lambda t: _rate(t.errors, t.requests)))},
    ]
    return {"rows": rows, "charts": charts, "start": start, "end": end,
            "requests": sum(g.total.requests for g in ranked),
            "edges": ", ".join(_ms(e) for e in LATENCY_EDGES_MS)}


async def _routes() -> list[tuple[str, object]]:
    from providers.cache import snapshot_cache

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
    from redis.exceptions import RedisError

    from gateway.clients import client_pool

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
        await asyncio.sleep(ANNOUNCE_INTERVAL_S)


async def circuits_view() -> dict:
    """The circuit list of the page: every live process's view where Redis is configured (this
    process announces itself first, so it is always in it), else this process's own."""
    from redis.exceptions import RedisError

    from gateway.clients import client_pool

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
