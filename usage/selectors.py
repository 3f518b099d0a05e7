"""Reads for finance reports: spend and tokens by day, month, team, key, provider and model.

Past days come from the rollups, summed by the database for each grouping asked (or in Python
from a finer grouping of the same report): the whole months of the range from the monthly one
(`MonthlyUsage`) unless the grouping is by day, the other days from the daily one
(`DailyUsage`); recent days, grouped by the database into *facts* (one per day, key, team,
provider and model) and summed in Python: today always, any past day that is not sealed
(usage.models.LedgerDay: yesterday until its first rollup ten minutes after it ended, and a day
a late row landed in until its next rollup), and any older day that has ledger rows but no
rollup yet (Celery beat not running). Of those days, today's and yesterday's sealed hours
(LedgerHour: a quarter of an hour after they ended) come from the hourly rollup
(`HourlyUsage`), every other hour from the ledger (`UsageRecord`).
Costs are summed as integer units of 1e-10 USD, so sums are exact on SQLite (whose decimals are
floats) as on MySQL, and every grouping adds up to the same total.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from providers.models import PRICE_OPTIONAL_FIELDS, ApiKey, ModelRoute, Provider, Team
from usage.budgets import period_bounds, units_to_usd
from usage.models import (
    BudgetCounter, BudgetScope, DailyUsage, HourlyUsage, MonthlyUsage, UsageRecord, UsageStatus,
)
from usage.pricing import TOKEN_FIELDS
from usage.rollups import (
    HOUR, cost_units_sum, day_bounds, day_hours, hourly_first_day, ledger_days_unsealed,
    ledger_hours_sealed, month_last_day,
)

DIMENSIONS = ("day", "month", "team", "key", "provider", "model", "tag", "end_user")
# Dimensions only the ledger has (not the rollup): a report that groups or filters by one reads
# the whole range from the ledger.
LEDGER_ONLY = ("tag", "end_user")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """UTC days `start`..`end` (both included); empty tuples mean "any". `tags`: rows with any
    of these tags; `end_users`: rows of any of these end users."""

    start: date
    end: date
    team_ids: tuple[int, ...] = ()
    key_ids: tuple[int, ...] = ()
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    end_users: tuple[str, ...] = ()

    @property
    def ledger_only(self) -> bool:
        return bool(self.tags or self.end_users)

    def days(self) -> Iterator[date]:
        day = self.start
        while day <= self.end:
            yield day
            day += timedelta(days=1)


@dataclass(slots=True)
class UsageTotals:
    """Sums of ledger rows; tokens per class as the ledger counts them (usage.pricing)."""
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: UsageTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for name in TOKEN_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd += other.cost_usd


@dataclass(frozen=True, slots=True)
class UsageFact:
    """Ledger totals of one day and one value of each of `_FACT_COLUMNS` (tags and end user
    only when the report needs them)."""

    day: date
    columns: dict[str, object]
    totals: UsageTotals

    def values(self, dimension: str) -> list[tuple]:
        """The fact's group key(s) for `dimension` (as `_COLUMNS` lists them): one, except for
        `tag`, where a row with several tags counts in each of them."""
        if dimension == "day":
            return [(self.day,)]
        if dimension == "month":
            return [(self.day.replace(day=1),)]
        if dimension == "tag":
            tags = self.columns.get("tags") or ""
            return [(tag,) for tag in tags.split(",")] if tags else [(None,)]
        if dimension == "end_user":
            return [(self.columns.get("end_user") or None,)]
        return [tuple(self.columns[c] for c in _COLUMNS[dimension])]


@dataclass(slots=True)
class UsageRow:
    """One group of a summary: `values` holds the group's value per dimension (ids for team and
    key, None where the ledger has none), `labels` their display text (a key's and a team's
    names as the ledger stored them: a key renamed within the range has a row per name)."""

    values: dict[str, object]
    labels: dict[str, str]
    totals: UsageTotals = field(default_factory=UsageTotals)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The groupings asked of `usage_report`, each a list of rows whose totals add up exactly
    to `total` (except by tag: a row with several tags counts in each)."""

    groupings: dict[tuple[str, ...], list[UsageRow]]
    total: UsageTotals
    # The days not read from the daily rollup, and the [start, end) ranges of them read from
    # the ledger (the others' hours came from the hourly rollup).
    ledger_days: tuple[date, ...]
    ledger_ranges: tuple[tuple[datetime, datetime], ...] = ()

    def group(self, dimensions: Sequence[str]) -> list[UsageRow]:
        return self.groupings[dimensions_normalized(dimensions)]


def dimensions_normalized(dimensions: Sequence[str]) -> tuple[str, ...]:
    """The dimensions in DIMENSIONS order; ValueError for an unknown one."""
    unknown = set(dimensions) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown dimension(s): {', '.join(sorted(unknown))}")
    return tuple(d for d in DIMENSIONS if d in dimensions)


# The columns that make up each dimension's group key (the first is its value).
_COLUMNS = {"day": ("day",), "month": ("month",), "team": ("team_id", "team_name"),
            "key": ("api_key_id", "key_name", "key_prefix"), "provider": ("provider_name",),
            "model": ("public_model",), "tag": ("tags",), "end_user": ("end_user",)}
_FACT_COLUMNS = ("api_key_id", "key_name", "key_prefix", "team_id", "team_name",
                 "provider_name", "public_model")


def _sums(*, rollup: bool) -> dict:
    """The aggregates a totals row is made of, in `_totals`' order."""
    if rollup:
        counts = {"requests_sum": Sum("requests"), "errors_sum": Sum("errors")}
    else:
        counts = {"requests": Count("id"), "errors": Count("id", filter=~Q(status=UsageStatus.OK))}
    return {**counts, **{f"{name}_sum": Sum(name) for name in TOKEN_FIELDS}, "units": cost_units_sum()}


def _totals(requests, errors, *rest) -> UsageTotals:
    """Totals from `_sums`' values. MySQL returns integer sums as Decimal; every backend
    returns None for no rows."""
    *tokens, units = rest
    return UsageTotals(requests=int(requests or 0), errors=int(errors or 0),
                       cost_usd=units_to_usd(int(units or 0)),
                       **{name: int(value or 0) for name, value in zip(TOKEN_FIELDS, tokens)})


def _tagged(tags: Sequence[str]) -> Q:
    """Rows carrying any of `tags` (stored comma-separated, lowercase)."""
    q = Q()
    for tag in tags:
        tag = tag.strip().lower()
        q |= (Q(tags=tag) | Q(tags__startswith=f"{tag},") | Q(tags__endswith=f",{tag}")
              | Q(tags__contains=f",{tag},"))
    return q


def _filtered(qs: QuerySet, flt: UsageFilter) -> QuerySet:
    """`qs` (the ledger or the rollup) narrowed by the filter; the tag and end-user filters
    apply to the ledger only (usage_report never reads the rollup when they are set)."""
    if qs.model is UsageRecord:
        if flt.tags:
            qs = qs.filter(_tagged(flt.tags))
        if flt.end_users:
            qs = qs.filter(end_user__in=flt.end_users)
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
    found: list[date] = []
    for run in _consecutive([day for day in days if day not in rolled]):
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


def _consecutive(items: list, step=timedelta(days=1)) -> list[list]:
    """`items` (ascending days, or hours with `step` HOUR) as runs of consecutive ones."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][-1] + step == item:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _ledger_facts(day: date, between: tuple[datetime, datetime], flt: UsageFilter, *,
                  attribution: bool) -> Iterator[UsageFact]:
    """The ledger rows of `day` created in `between` ([start, end)) grouped by key, team (with
    their stored names), provider and model in the database; also by tags and end user with
    `attribution`."""
    start, end = between
    columns = (*_FACT_COLUMNS, "tags", "end_user") if attribution else _FACT_COLUMNS
    yield from _facts(day, _filtered(UsageRecord.objects.between(start, end), flt), columns,
                      rollup=False)


def _hourly_facts(day: date, hours: list[datetime], flt: UsageFilter) -> Iterator[UsageFact]:
    """The hourly rollup of `hours` (sealed hours of `day`) grouped like `_ledger_facts`."""
    yield from _facts(day, _filtered(HourlyUsage.objects.filter(hour__in=hours), flt),
                      _FACT_COLUMNS, rollup=True)


def _facts(day: date, rows: QuerySet, columns: Sequence[str], *, rollup: bool
           ) -> Iterator[UsageFact]:
    """`rows` (the ledger's, or a rollup's with `rollup`) grouped by `columns` in the
    database, as facts of `day`."""
    width = len(columns)
    for row in rows.values_list(*columns).annotate(**_sums(rollup=rollup)).order_by():
        yield UsageFact(day, dict(zip(columns, row[:width])), _totals(*row[width:]))


def _day_facts(days: list[date], flt: UsageFilter, *, today: date, attribution: bool
               ) -> tuple[list[UsageFact], list[tuple[datetime, datetime]]]:
    """The facts of `days` (ascending; days not read from the daily rollup): the sealed hours
    of today and yesterday from the hourly rollup (not with `attribution`: it has no tags or
    end users), every other hour from the ledger, one range per run of such hours. Returns
    the facts and the ledger ranges read."""
    hourly_from = hourly_first_day(today)
    sealed = set()
    if not attribution and days and days[-1] >= hourly_from:
        sealed = ledger_hours_sealed(start=day_bounds(max(days[0], hourly_from))[0],
                                     end=day_bounds(days[-1])[1])
    facts: list[UsageFact] = []
    ranges: list[tuple[datetime, datetime]] = []
    for day in days:
        hours = day_hours(day)
        if sealed.intersection(hours):
            facts.extend(_hourly_facts(day, [h for h in hours if h in sealed], flt))
        runs = [(run[0], run[-1] + HOUR)
                for run in _consecutive([h for h in hours if h not in sealed], HOUR)]
        for run in runs:
            facts.extend(_ledger_facts(day, run, flt, attribution=attribution))
        ranges.extend(runs)
    return facts, ranges


def _rollup_groups(flt: UsageFilter, older: list[date],
                   dims: tuple[str, ...]) -> Iterator[tuple[tuple, UsageTotals]]:
    """The rollups of the days `older` (consecutive, ascending) grouped by `dims` in the
    database: without `day` among them, the whole months of the range from the monthly rollup
    and the days around them from the daily one (by `month`: the day's); with `day`, every day
    from the daily one."""
    if not older:
        return
    start, end = older[0], older[-1]
    first_month = start if start.day == 1 else month_last_day(start) + timedelta(days=1)
    last_month = month_last_day(end).replace(day=1)
    if month_last_day(last_month) != end:
        last_month = (last_month - timedelta(days=1)).replace(day=1)
    daily = DailyUsage.objects.filter(day__gte=start, day__lte=end)
    if "day" not in dims and first_month <= last_month:
        yield from _grouped_sums(
            _filtered(MonthlyUsage.objects.filter(month__gte=first_month, month__lte=last_month), flt),
            dims)
        daily = daily.filter(Q(day__lt=first_month) | Q(day__gt=month_last_day(last_month)))
        if start == first_month and end == month_last_day(last_month):
            return
    yield from _grouped_sums(_filtered(daily, flt), dims)


def _grouped_sums(rollup: QuerySet, dims: tuple[str, ...]) -> Iterator[tuple[tuple, UsageTotals]]:
    """Rollup rows summed by the database, one group per value of `dims`' columns."""
    sums = _sums(rollup=True)
    if "month" in dims and rollup.model is DailyUsage:
        rollup = rollup.annotate(month=TruncMonth("day"))
    if not dims:
        totals = rollup.aggregate(**sums)
        if totals["requests_sum"] is not None:
            yield (), _totals(*totals.values())
        return
    columns = [c for d in dims for c in _COLUMNS[d]]
    width = len(columns)
    for row in rollup.values_list(*columns).annotate(**sums).order_by():
        yield _grouped(row[:width], dims), _totals(*row[width:])


def _grouped(flat: Sequence, dims: Sequence[str]) -> tuple[tuple, ...]:
    """A flat row of `_COLUMNS` values as one tuple per dimension."""
    out, i = [], 0
    for d in dims:
        width = len(_COLUMNS[d])
        out.append(tuple(flat[i:i + width]))
        i += width
    return tuple(out)


# A grouping is summed in Python from a finer one already summed (by day and team -> by day,
# by team, the total) when that one has at most this many groups; otherwise the database
# sums it. Summing a group costs a few microseconds in Python, a query a few milliseconds.
DERIVE_MAX_GROUPS = 10_000


def _finer(sums: dict[tuple[str, ...], dict[tuple, UsageTotals]],
           dims: tuple[str, ...]) -> tuple[str, ...] | None:
    """The smallest grouping in `sums` that `dims` can be summed from: it has every one of
    `dims` (and `tag` only if `dims` has it: a row counts once per tag, so summing tags away
    would count it again), and at most DERIVE_MAX_GROUPS groups."""
    fitting = [finer for finer, groups in sums.items()
               if set(dims) < set(finer) and ("tag" in dims or "tag" not in finer)
               and len(groups) <= DERIVE_MAX_GROUPS]
    return min(fitting, key=lambda finer: len(sums[finer]), default=None)


def _summed_from(groups: dict[tuple, UsageTotals], finer: tuple[str, ...],
                 dims: tuple[str, ...]) -> dict[tuple, UsageTotals]:
    """`groups` (grouped by `finer`) summed by `dims`, a subset of `finer`."""
    picks = [finer.index(d) for d in dims]
    out: dict[tuple, UsageTotals] = {}
    for key, totals in groups.items():
        out.setdefault(tuple(key[i] for i in picks), UsageTotals()).add(totals)
    return out


def usage_report(*, flt: UsageFilter, groupings: Sequence[Sequence[str]],
                 now: datetime | None = None) -> UsageReport:
    """Spend and tokens of `flt`'s range and filters, summed by each grouping (a subset of
    DIMENSIONS each; the empty grouping is the total). Each grouping is summed over the
    rollups (the monthly one for whole months when it does not group by day) plus the ledger
    days' facts, by the database or from a finer grouping of the same report (exact integer
    sums either way), so every grouping's rows add up exactly to the total (by tag, a row
    counts once per tag it carries). A report that groups or filters by tag or end user reads
    every day from the ledger (the rollups have neither). Days after today (UTC) hold nothing
    and are not read. Keys and teams are labelled with the names the ledger stored (their
    current names for rows written before names were stored). Rows are ordered by their
    dimensions' labels, days ascending."""
    today = timezone.localtime(now or timezone.now(), timezone.get_fixed_timezone(0)).date()
    days = [d for d in flt.days() if d <= today]
    wanted = {dimensions_normalized(g) for g in groupings} | {()}
    attribution = flt.ledger_only or any(d in LEDGER_ONLY for dims in wanted for d in dims)
    if attribution:
        older, ledger_days = [], days
    else:
        past = [d for d in days if d < today]
        unsealed = (ledger_days_unsealed(first=past[0], last=today - timedelta(days=1))
                    if past else set())
        older = [d for d in past if d not in unsealed]
        ledger_days = sorted([d for d in days if d == today or d in unsealed]
                             + _ledger_days_without_rollup(older))
    facts, ledger_ranges = _day_facts(ledger_days, flt, today=today, attribution=attribution)
    # Days without a rollup have no rollup rows, so each run of older days can be read whole
    # (runs: an unsealed day between two is read from the ledger).
    runs = _consecutive(older)

    sums: dict[tuple[str, ...], dict[tuple, UsageTotals]] = {}
    # Finer groupings first, so the coarser ones can be summed from them.
    for dims in sorted(wanted, key=len, reverse=True):
        finer = _finer(sums, dims)
        if finer is not None:
            sums[dims] = _summed_from(sums[finer], finer, dims)
            continue
        groups: dict[tuple, UsageTotals] = {}
        for run in runs:
            for key, totals in _rollup_groups(flt, run, dims):
                groups.setdefault(key, UsageTotals()).add(totals)
        for fact in facts:
            for key in itertools.product(*(fact.values(d) for d in dims)):
                groups.setdefault(key, UsageTotals()).add(fact.totals)
        sums[dims] = groups

    labeller = _labeller(sums)
    grouped = {}
    for dims, groups in sums.items():
        # Rows of one key before and after its name was stored carry the same label: one row.
        merged: dict[tuple, UsageRow] = {}
        for key, totals in groups.items():
            labels = {d: labeller.label(d, part) for d, part in zip(dims, key)}
            row = merged.setdefault(tuple((part[0], labels[d]) for d, part in zip(dims, key)),
                                    UsageRow(values={d: part[0] for d, part in zip(dims, key)},
                                             labels=labels))
            row.totals.add(totals)
        grouped[dims] = sorted(merged.values(), key=lambda r, dims=dims: tuple(
            (r.values[d] is None,
             r.values[d].isoformat() if d in ("day", "month") else r.labels[d].lower())
            for d in dims))
    total = grouped[()][0].totals if grouped[()] else UsageTotals()
    return UsageReport(groupings=grouped, total=total, ledger_days=tuple(ledger_days),
                       ledger_ranges=tuple(ledger_ranges))


def _labeller(sums: dict[tuple[str, ...], dict[tuple, UsageTotals]]) -> _Labeller:
    """Current names, only for the keys and teams of groups without a stored name."""
    unnamed: dict[str, set[int]] = {"team": set(), "key": set()}
    for dims, groups in sums.items():
        for d in ("team", "key"):
            if d in dims:
                i = dims.index(d)
                unnamed[d] |= {k[i][0] for k in groups if k[i][0] is not None and not k[i][1]}
    return _Labeller(
        team_names=dict(Team.objects.filter(pk__in=unnamed["team"]).values_list("pk", "name"))
        if unnamed["team"] else {},
        key_labels={pk: (name, prefix) for pk, name, prefix in
                    ApiKey.objects.filter(pk__in=unnamed["key"]).values_list("pk", "name", "prefix")}
        if unnamed["key"] else {})


@dataclass(frozen=True, slots=True)
class _Labeller:
    team_names: dict[int, str]
    key_labels: dict[int, tuple[str, str]]

    def label(self, dimension: str, part: tuple) -> str:
        """The display text of one dimension's group key (`_COLUMNS[dimension]` values)."""
        value = part[0]
        if dimension == "day":
            return value.isoformat()
        if dimension == "month":
            return value.strftime("%Y-%m")
        if dimension == "team":
            if value is None:
                return "(no team)"
            return part[1] or self.team_names.get(value, f"team #{value}")
        if dimension == "key":
            if value is None:
                return "(no key)"
            name, prefix = (part[1], part[2]) if part[1] else self.key_labels.get(
                value, (f"key #{value}", part[2]))
            return f"{name} ({prefix}…)" if prefix else name
        if dimension == "tag":
            return "(no tag)" if value is None else value
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


# The raw ledger export's columns: each row with its key's and team's names as they were, its
# tokens per class and the price version it was billed at (id and every rate per million
# tokens), so finance can recompute any cost (usage.pricing states how).
PRICE_RATE_COLUMNS = ("input_per_mtok", "output_per_mtok", *PRICE_OPTIONAL_FIELDS)
LEDGER_FIELDS = (
    "id", "created_at", "request_id", "client_request_id", "api_key_id", "key_prefix",
    "key_name", "team_id", "team_name", "surface", "public_model", "upstream_model",
    "provider_name", "route_id", "stream", "status", "http_status", "error_type", *TOKEN_FIELDS,
    "usage_source", "cost_usd", "price_id", "price__effective_from",
    *(f"price__{name}" for name in PRICE_RATE_COLUMNS), "latency_ms", "ttft_ms", "tags",
    "end_user",
)


def ledger_records(*, flt: UsageFilter) -> QuerySet:
    """The ledger rows of the range and filters (with the price version joined), unordered."""
    start, end = day_bounds(flt.start)[0], day_bounds(flt.end)[1]
    return (_filtered(UsageRecord.objects.between(start, end), flt)
            .select_related("price").order_by())


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

