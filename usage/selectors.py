"""Reads for finance reports: spend and tokens by day, team, key, provider and model.

Past days come from the daily rollup (`DailyUsage`, small), summed by the database for each
grouping asked; recent days from the ledger (`UsageRecord`), grouped by the database into
*facts* (one per day, key, team, provider and model) and summed in Python: today and yesterday
always (the rollup of a day keeps running until the next day ends, so they may still be
moving), and any older day that has ledger rows but no rollup yet (Celery beat not running).
Costs are summed as integer units of 1e-10 USD, so sums are exact on SQLite (whose decimals are
floats) as on MySQL, and every grouping adds up to the same total.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from django.db.models import BigIntegerField, Count, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Cast, Round
from django.utils import timezone

from providers.models import ApiKey, ModelRoute, Provider, Team
from usage.budgets import UNITS_PER_USD, period_bounds, units_to_usd
from usage.models import BudgetCounter, BudgetScope, DailyUsage, UsageRecord, UsageStatus
from usage.rollups import day_bounds

DIMENSIONS = ("day", "team", "key", "provider", "model")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """UTC days `start`..`end` (both included); empty tuples mean "any"."""

    start: date
    end: date
    team_ids: tuple[int, ...] = ()
    key_ids: tuple[int, ...] = ()
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def days(self) -> Iterator[date]:
        day = self.start
        while day <= self.end:
            yield day
            day += timedelta(days=1)


@dataclass(slots=True)
class UsageTotals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: UsageTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd += other.cost_usd


@dataclass(frozen=True, slots=True)
class UsageFact:
    """Ledger totals of one (day, key, team, provider, model)."""

    day: date
    key_id: int | None
    team_id: int | None
    provider: str
    model: str
    totals: UsageTotals

    def value(self, dimension: str):
        return {"day": self.day, "team": self.team_id, "key": self.key_id,
                "provider": self.provider, "model": self.model}[dimension]


@dataclass(slots=True)
class UsageRow:
    """One group of a summary: `values` holds the group's value per dimension (ids for team and
    key, None where the ledger has none), `labels` their display text."""

    values: dict[str, object]
    labels: dict[str, str]
    totals: UsageTotals = field(default_factory=UsageTotals)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The groupings asked of `usage_report`, each a list of rows whose totals add up exactly
    to `total`."""

    groupings: dict[tuple[str, ...], list[UsageRow]]
    total: UsageTotals
    ledger_days: tuple[date, ...]

    def group(self, dimensions: Sequence[str]) -> list[UsageRow]:
        return self.groupings[dimensions_normalized(dimensions)]


def dimensions_normalized(dimensions: Sequence[str]) -> tuple[str, ...]:
    """The dimensions in DIMENSIONS order; ValueError for an unknown one."""
    unknown = set(dimensions) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown dimension(s): {', '.join(sorted(unknown))}")
    return tuple(d for d in DIMENSIONS if d in dimensions)


_COLUMNS = {"day": "day", "team": "team_id", "key": "api_key_id", "provider": "provider_name",
            "model": "public_model"}


def _units_sum():
    # ROUND(cost * 1e10) recovers the exact 1e-10 quantum on SQLite too (whose decimals are
    # floats with 15 significant digits); integer sums are exact everywhere.
    return Sum(Cast(Round(F("cost_usd") * Value(int(UNITS_PER_USD))), BigIntegerField()))


def _totals(requests, errors, inp, out, cached, reasoning, units) -> UsageTotals:
    # MySQL returns integer sums as Decimal; every backend returns None for no rows.
    return UsageTotals(int(requests or 0), int(errors or 0), int(inp or 0), int(out or 0),
                       int(cached or 0), int(reasoning or 0), units_to_usd(int(units or 0)))


def _filtered(qs: QuerySet, flt: UsageFilter) -> QuerySet:
    if flt.team_ids:
        qs = qs.filter(team_id__in=flt.team_ids)
    if flt.key_ids:
        qs = qs.filter(api_key_id__in=flt.key_ids)
    if flt.providers:
        qs = qs.filter(provider_name__in=flt.providers)
    if flt.models:
        qs = qs.filter(public_model__in=flt.models)
    return qs


def _ledger_days_without_rollup(days: list[date]) -> list[date]:
    """Days among `days` (ascending) with ledger rows but no rollup, found with one index seek
    per run of such days and per day found (never a scan of the ledger)."""
    if not days:
        return []
    rolled = set(DailyUsage.objects.filter(day__gte=days[0], day__lte=days[-1])
                 .values_list("day", flat=True).distinct().order_by())
    runs: list[list[date]] = []
    for day in days:
        if day in rolled:
            continue
        if runs and runs[-1][-1] + timedelta(days=1) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    found: list[date] = []
    for run in runs:
        start, end = day_bounds(run[0])[0], day_bounds(run[-1])[1]
        while start < end:
            first = (UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
                     .order_by("created_at").values_list("created_at", flat=True).first())
            if first is None:
                break
            day = timezone.localtime(first, timezone.get_fixed_timezone(0)).date()
            found.append(day)
            start = day_bounds(day)[1]
    return found


def _ledger_facts(day: date, flt: UsageFilter) -> Iterator[UsageFact]:
    """One day of the ledger grouped by key, team, provider and model in the database."""
    start, end = day_bounds(day)
    rows = (_filtered(UsageRecord.objects.between(start, end), flt)
            .values_list("api_key_id", "team_id", "provider_name", "public_model")
            .annotate(requests=Count("id"), errors=Count("id", filter=~Q(status=UsageStatus.OK)),
                      inp=Sum("input_tokens"), out=Sum("output_tokens"),
                      cached=Sum("cached_tokens"), reasoning=Sum("reasoning_tokens"),
                      units=_units_sum())
            .order_by())
    for key_id, team_id, provider, model, *sums in rows:
        yield UsageFact(day, key_id, team_id, provider, model, _totals(*sums))


def _rollup_groups(flt: UsageFilter, start: date, end: date,
                   dims: tuple[str, ...]) -> Iterator[tuple[tuple, UsageTotals]]:
    """The daily rollup of days start..end grouped by `dims` in the database."""
    daily = _filtered(DailyUsage.objects.filter(day__gte=start, day__lte=end), flt)
    sums = {"requests_sum": Sum("requests"), "errors_sum": Sum("errors"),
            "inp": Sum("input_tokens"), "out": Sum("output_tokens"), "cached": Sum("cached_tokens"),
            "reasoning": Sum("reasoning_tokens"), "units": _units_sum()}
    if not dims:
        totals = daily.aggregate(**sums)
        if totals["requests_sum"] is not None:
            yield (), _totals(*totals.values())
        return
    for *key, requests, errors, inp, out, cached, reasoning, units in (
            daily.values_list(*(_COLUMNS[d] for d in dims)).annotate(**sums).order_by()):
        yield tuple(key), _totals(requests, errors, inp, out, cached, reasoning, units)


def usage_report(*, flt: UsageFilter, groupings: Sequence[Sequence[str]],
                 now: datetime | None = None) -> UsageReport:
    """Spend and tokens of `flt`'s range and filters, summed by each grouping (a subset of
    DIMENSIONS each; the empty grouping is the total). Each grouping is summed by the database
    over the rollup plus the ledger days' facts, so every grouping's rows add up exactly to the
    total. Days after today (UTC) hold nothing and are not read. Rows are ordered by their
    dimensions' labels, days ascending."""
    today = timezone.localtime(now or timezone.now(), timezone.get_fixed_timezone(0)).date()
    days = [d for d in flt.days() if d <= today]
    recent = {today, today - timedelta(days=1)}
    older = [d for d in days if d not in recent]
    ledger_days = sorted([d for d in days if d in recent] + _ledger_days_without_rollup(older))
    facts = [fact for day in ledger_days for fact in _ledger_facts(day, flt)]

    wanted = {dimensions_normalized(g) for g in groupings} | {()}
    sums: dict[tuple[str, ...], dict[tuple, UsageTotals]] = {}
    for dims in wanted:
        groups: dict[tuple, UsageTotals] = {}
        if older:
            # Days without a rollup have no rollup rows, so the whole older range can be read.
            for key, totals in _rollup_groups(flt, older[0], older[-1], dims):
                groups.setdefault(key, UsageTotals()).add(totals)
        for fact in facts:
            groups.setdefault(tuple(fact.value(d) for d in dims), UsageTotals()).add(fact.totals)
        sums[dims] = groups

    team_ids = {k[dims.index("team")] for dims, g in sums.items() if "team" in dims for k in g}
    key_ids = {k[dims.index("key")] for dims, g in sums.items() if "key" in dims for k in g}
    labeller = _Labeller(
        team_names=dict(Team.objects.filter(pk__in=team_ids - {None}).values_list("pk", "name")),
        key_labels={pk: (name, prefix) for pk, name, prefix in
                    ApiKey.objects.filter(pk__in=key_ids - {None}).values_list("pk", "name", "prefix")})
    grouped = {}
    for dims, groups in sums.items():
        rows = [UsageRow(values=dict(zip(dims, key)),
                         labels={d: labeller.label(d, v) for d, v in zip(dims, key)}, totals=totals)
                for key, totals in groups.items()]
        grouped[dims] = sorted(rows, key=lambda r, dims=dims: tuple(
            (r.values[d] is None, r.values[d].isoformat() if d == "day" else r.labels[d].lower())
            for d in dims))
    total = grouped[()][0].totals if grouped[()] else UsageTotals()
    return UsageReport(groupings=grouped, total=total, ledger_days=tuple(ledger_days))


@dataclass(frozen=True, slots=True)
class _Labeller:
    team_names: dict[int, str]
    key_labels: dict[int, tuple[str, str]]

    def label(self, dimension: str, value) -> str:
        if dimension == "day":
            return value.isoformat()
        if dimension == "team":
            return "(no team)" if value is None else self.team_names.get(value, f"team #{value}")
        if dimension == "key":
            if value is None:
                return "(no key)"
            name, prefix = self.key_labels.get(value, (f"key #{value}", ""))
            return f"{name} ({prefix}…)" if prefix else name
        return value or "(none)"


def cents_apportioned(amounts: Sequence[Decimal]) -> list[Decimal]:
    """Round each amount to a cent so that the rounded amounts add up exactly to the rounded
    sum (largest remainder method): no cent appears or vanishes between rows and the total.
    Each result is its amount rounded down or up, never further."""
    if not amounts:
        return []
    floors = [a.quantize(CENT, rounding=ROUND_FLOOR) for a in amounts]
    target = sum(amounts, Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    extra = int((target - sum(floors, Decimal(0))) / CENT)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] - floors[i]), i))
    for i in by_remainder[:extra]:
        floors[i] += CENT
    return floors


def filter_choices() -> dict[str, list[tuple[str, str]]]:
    """Values the report filters offer: every team and key, and the providers and models of
    the configuration and of the rollups (so retired ones can still be chosen)."""
    providers = set(Provider.objects.values_list("name", flat=True))
    providers |= set(DailyUsage.objects.values_list("provider_name", flat=True).distinct().order_by())
    models = set(ModelRoute.objects.values_list("public_model", flat=True).distinct().order_by())
    models |= set(DailyUsage.objects.values_list("public_model", flat=True).distinct().order_by())
    return {
        "team": [(str(pk), name) for pk, name in Team.objects.order_by("name").values_list("pk", "name")],
        "key": [(str(pk), f"{name} ({prefix}…)") for pk, name, prefix in
                ApiKey.objects.order_by("name", "pk").values_list("pk", "name", "prefix")],
        "provider": [(p, p) for p in sorted(providers - {""})],
        "model": [(m, m) for m in sorted(models - {""})],
    }


# The raw ledger export's columns: each row with the price version it was billed at (id and
# unit prices per million tokens), so finance can recompute any cost.
LEDGER_FIELDS = (
    "id", "created_at", "request_id", "client_request_id", "api_key_id", "key_prefix",
    "api_key__name", "team_id", "team__name", "surface", "public_model", "upstream_model",
    "provider_name", "route_id", "stream", "status", "http_status", "error_type", "input_tokens",
    "output_tokens", "cached_tokens", "reasoning_tokens", "usage_source", "cost_usd", "price_id",
    "price__effective_from", "price__input_per_mtok", "price__output_per_mtok",
    "price__cached_input_per_mtok", "latency_ms", "ttft_ms",
)


def ledger_records(*, flt: UsageFilter) -> QuerySet:
    """The ledger rows of the range and filters (with key, team and price joined), unordered."""
    start, end = day_bounds(flt.start)[0], day_bounds(flt.end)[1]
    return (_filtered(UsageRecord.objects.between(start, end), flt)
            .select_related("api_key", "team", "price").order_by())


def ledger_page(*, flt: UsageFilter, after: tuple[datetime, int] | None = None,
                size: int = 2000) -> list[tuple]:
    """Up to `size` ledger rows of the range and filters as LEDGER_FIELDS tuples, oldest first,
    strictly after the (created_at, id) position `after`. Paging by position (not OFFSET) keeps
    each page one index range read however deep the export goes."""
    rows = ledger_records(flt=flt)
    if after is not None:
        rows = rows.after(*after)
    return list(rows.order_by("created_at", "id").values_list(*LEDGER_FIELDS)[:size])


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    scope: str
    scope_id: int
    name: str
    period: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    period_start: datetime
    period_end: datetime | None

    @property
    def remaining_usd(self) -> Decimal:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    @property
    def used_pct(self) -> Decimal:
        if self.limit_usd <= 0:
            return Decimal(100)
        return ((self.spent_usd + self.reserved_usd) * 100 / self.limit_usd).quantize(Decimal("0.1"))


def budget_statuses(*, now: datetime | None = None) -> list[BudgetStatus]:
    """Every team and active key with a budget, in its current period: teams first, then keys,
    each by name. Spent and reserved come from the budget counters (usage.budgets)."""
    now = now or timezone.now()
    scoped: list[tuple[str, int, str, Decimal, str]] = []
    for team in Team.objects.filter(budget_usd__isnull=False).order_by("name"):
        scoped.append((BudgetScope.TEAM, team.pk, team.name, team.budget_usd, team.budget_period))
    for key in ApiKey.objects.active().filter(budget_usd__isnull=False).order_by("name", "pk"):
        scoped.append((BudgetScope.KEY, key.pk, f"{key.name} ({key.prefix}…)", key.budget_usd,
                       key.budget_period))
    bounds = {(scope, scope_id): period_bounds(period, now)
              for scope, scope_id, _, _, period in scoped}
    starts = {start for start, _ in bounds.values()}
    counters = {(c.scope, c.scope_id, c.period, c.period_start): c
                for c in BudgetCounter.objects.filter(period_start__in=starts)}
    statuses = []
    for scope, scope_id, name, limit, period in scoped:
        start, end = bounds[(scope, scope_id)]
        counter = counters.get((scope, scope_id, period, start))
        statuses.append(BudgetStatus(
            scope=scope, scope_id=scope_id, name=name, period=period, limit_usd=limit,
            spent_usd=units_to_usd(counter.spent_units if counter else 0),
            reserved_usd=units_to_usd(counter.reserved_units if counter else 0),
            period_start=start, period_end=end))
    return statuses


def date_range_default(*, now: datetime | None = None, days: int = 30) -> tuple[date, date]:
    """The last `days` UTC days, today included."""
    today = timezone.localtime(now or timezone.now(), timezone.get_fixed_timezone(0)).date()
    return today - timedelta(days=days - 1), today

