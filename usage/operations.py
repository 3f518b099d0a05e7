"""Reads for the operations page: latency and time-to-first-token percentiles and error rates
per provider and model by UTC hour.

Hours come from the hourly rollup (HourlyOperations, filled with DailyUsage by
usage.rollups.usage_rollup), except the current and the previous hour (the rollup of the day
may not have caught up with them yet) and any day the rollup has not run for: those are
counted from the ledger by the same function the rollup uses. Percentiles are interpolated
from fixed latency buckets (usage.rollups.LATENCY_EDGES_MS), so a p95 is exact to within its
bucket, never read from single rows.

The circuits each serving process sees are gateway.process_views' (a serving process's state,
so it lives with the proxy).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone

from django.utils import timezone

from usage.charts import Series, lines
from usage.models import HourlyOperations
from usage.rollups import (
    LATENCY_EDGES_MS, OperationsTotals, day_bounds, operations_hours, percentile_from_buckets,
)


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
