"""Prometheus metrics: GET /metrics in the text format.

Counters and histograms are prometheus_client metrics. With several worker processes set
PROMETHEUS_MULTIPROC_DIR (an empty directory shared by the workers, as docker-compose does):
every process writes its own files and a scrape of any worker adds them up. Replicas are
scraped one by one, as usual. Circuit, provider and budget gauges are read at scrape time from
the routing state and the budget counters (the rollups), never from a ledger scan, and exposed
by a custom collector on a registry made for that scrape.
Labels are bounded: surfaces, configured public models, provider names, statuses.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
    if cost_usd > 0:  # a negative price (usage.budgets logs it) must not fail the request
        COST.inc(cost_usd)


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What the gauges of one scrape show: read once per scrape, then exposed by
    `GatewayStateCollector`. `circuits`: (provider, public model, open?) per route;
    `budgets`: (scope label, USD left in the current period)."""
    circuits: tuple[tuple[str, str, bool], ...]
    budgets: tuple[tuple[str, float], ...]


class GatewayStateCollector(Collector):
    """A collector over one `GatewayState`. Registered on a per-scrape registry: the state is
    read asynchronously (Redis, the database) in the view, while prometheus_client collects
    synchronously."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        circuit = GaugeMetricFamily("gateway_circuit_open", "1 when the route's circuit is open",
                                    labels=["provider", "route"])
        up: dict[str, bool] = {}
        for provider, route, is_open in self._state.circuits:
            circuit.add_metric([provider, route], int(is_open))
            up[provider] = up.get(provider, False) or not is_open
        yield circuit
        provider_up = GaugeMetricFamily(
            "gateway_provider_up", "1 when at least one route of the provider is usable",
            labels=["provider"])
        for provider, usable in sorted(up.items()):
            provider_up.add_metric([provider], int(usable))
        yield provider_up
        budget = GaugeMetricFamily("gateway_budget_remaining_usd",
                                   "Budget left in the current period", labels=["scope"])
        for scope, remaining in self._state.budgets:
            budget.add_metric([scope], remaining)
        yield budget


def _budgets_remaining() -> tuple[tuple[str, float], ...]:
    from providers.models import ApiKey, Team
    from usage.budgets import period_bounds, units_to_usd
    from usage.models import BudgetCounter

    now = timezone.now()
    limits = {("key", k.id): (k.budget_usd, f"key:{k.prefix}")
              for k in ApiKey.objects.active().exclude(budget_usd=None)}
    limits.update({("team", t.id): (t.budget_usd, f"team:{t.name}")
                   for t in Team.objects.exclude(budget_usd=None)})
    counters = {(c.scope, c.scope_id): c for c in BudgetCounter.objects.filter(
        scope_id__in=[scope_id for _, scope_id in limits])
        if period_bounds(c.period, now)[0] == c.period_start}
    remaining = []
    for scope_key, (limit, label) in sorted(limits.items(), key=lambda item: item[1][1]):
        counter = counters.get(scope_key)
        used = units_to_usd(counter.spent_units + counter.reserved_units) if counter else 0
        remaining.append((label, float(limit - used)))
    return tuple(remaining)


async def gateway_state_read() -> GatewayState:
    """Circuit state of every configured route (shared routing state) and the budgets' rollups."""
    snapshot = await snapshot_cache.get()
    routes = [(model, d) for model, ds in snapshot.deployments.items() for d in ds]
    views = await client_pool.routing().snapshot([d.candidate for _, d in routes])
    circuits = []
    for model, d in routes:
        view = views.get(d.route_id)
        circuits.append((d.provider_name, model, view is not None and view.state == "open"))
    return GatewayState(circuits=tuple(circuits), budgets=await db.run(_budgets_remaining))


def scrape_registry(state: GatewayState) -> CollectorRegistry:
    """The registry of one scrape: this process's metrics (or, with PROMETHEUS_MULTIPROC_DIR,
    every worker's, added up from their files) and the gauges of `state`."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(PROCESS_REGISTRY)
    registry.register(GatewayStateCollector(state))
    return registry


async def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.GATEWAY_METRICS_TOKEN
    if token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return HttpResponse("unauthorized\n", status=401, content_type="text/plain")
    body = generate_latest(scrape_registry(await gateway_state_read()))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
