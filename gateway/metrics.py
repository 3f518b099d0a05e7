"""Prometheus metrics: GET /metrics in the text format.

Counters and histograms are prometheus_client metrics. With several worker processes set
PROMETHEUS_MULTIPROC_DIR (an empty directory shared by the workers, as docker-compose does):
every process writes its own files and a scrape of any worker adds them up. Replicas are
scraped one by one, as usual. Circuit, provider and budget gauges are computed at scrape time
from the routing state and the budget counters (the rollups), never from a ledger scan.
Labels are bounded: surfaces, configured public models, provider names, statuses.
"""
from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from gateway.clients import client_pool
from gateway.database import db
from providers.cache import snapshot_cache

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("gateway_requests_total", "Proxied requests by outcome",
                   ["surface", "model", "provider", "status"])
DURATION = Histogram("gateway_request_duration_seconds", "Request duration, to the last byte",
                     ["surface"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("gateway_time_to_first_token_seconds", "Time to the first token",
                 ["surface"], buckets=LATENCY_BUCKETS)
ACTIVE = Gauge("gateway_active_requests", "Requests being proxied now", multiprocess_mode="livesum")
TOKENS = Counter("gateway_tokens_total", "Tokens by type", ["type"])
COST = Counter("gateway_cost_usd_total", "Spend in USD")
PROVIDER_LATENCY = Histogram("gateway_provider_latency_seconds",
                             "Upstream time to response headers", ["provider"],
                             buckets=LATENCY_BUCKETS)


def request_observe(*, surface: str, model: str, provider: str, status: str, duration_s: float,
                    ttft_s: float | None, input_tokens: int, output_tokens: int, cached_tokens: int,
                    reasoning_tokens: int, cost_usd: float) -> None:
    REQUESTS.labels(surface, model, provider or "none", status).inc()
    DURATION.labels(surface).observe(duration_s)
    if ttft_s is not None:
        TTFT.labels(surface).observe(ttft_s)
    for kind, count in (("input", input_tokens), ("output", output_tokens),
                        ("cached", cached_tokens), ("reasoning", reasoning_tokens)):
        if count:
            TOKENS.labels(kind).inc(count)
    if cost_usd:
        COST.inc(cost_usd)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _budget_lines() -> list[str]:
    from usage.budgets import period_bounds, units_to_usd
    from usage.models import BudgetCounter
    from providers.models import ApiKey, Team

    now = timezone.now()
    limits = {("key", k.id): (k.budget_usd, k.budget_period, f"key:{k.prefix}")
              for k in ApiKey.objects.active().exclude(budget_usd=None)}
    limits.update({("team", t.id): (t.budget_usd, t.budget_period, f"team:{t.name}")
                   for t in Team.objects.exclude(budget_usd=None)})
    counters = {(c.scope, c.scope_id): c for c in BudgetCounter.objects.filter(
        scope_id__in=[scope_id for _, scope_id in limits])
        if period_bounds(c.period, now)[0] == c.period_start}
    lines = []
    for (scope, scope_id), (limit, _period, label) in sorted(limits.items(), key=lambda i: i[1][2]):
        counter = counters.get((scope, scope_id))
        used = units_to_usd(counter.spent_units + counter.reserved_units) if counter else 0
        lines.append(f'gateway_budget_remaining_usd{{scope="{_escape(label)}"}} {float(limit - used)}')
    return lines


async def _state_lines() -> list[str]:
    snapshot = await snapshot_cache.get()
    routes = [(model, d) for model, ds in snapshot.deployments.items() for d in ds]
    views = await client_pool.routing().snapshot([d.candidate for _, d in routes])
    up: dict[str, int] = {}
    circuit = ["# HELP gateway_circuit_open 1 when the route's circuit is open",
               "# TYPE gateway_circuit_open gauge"]
    for model, d in routes:
        view = views.get(d.route_id)
        is_open = view is not None and view.state == "open"
        circuit.append(f'gateway_circuit_open{{provider="{_escape(d.provider_name)}",'
                       f'route="{_escape(model)}"}} {int(is_open)}')
        up[d.provider_name] = max(up.get(d.provider_name, 0), int(not is_open))
    provider = ["# HELP gateway_provider_up 1 when at least one route of the provider is usable",
                "# TYPE gateway_provider_up gauge"]
    provider += [f'gateway_provider_up{{provider="{_escape(name)}"}} {value}'
                 for name, value in sorted(up.items())]
    budget = ["# HELP gateway_budget_remaining_usd Budget left in the current period",
              "# TYPE gateway_budget_remaining_usd gauge"]
    budget += await db.run(_budget_lines)
    return circuit + provider + budget


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return PROCESS_REGISTRY


async def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.GATEWAY_METRICS_TOKEN
    if token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return HttpResponse("unauthorized\n", status=401, content_type="text/plain")
    body = generate_latest(_registry()).decode()
    body += "\n".join(await _state_lines()) + "\n"
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
