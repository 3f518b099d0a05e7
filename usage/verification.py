"""The ledger proves itself: every row's cost recomputed from its price version and its tokens,
each day's sums compared with the rollup, each month's monthly rollup with its days' rollups,
each budget counter's spend with the ledger
(`manage.py ledger_verify`). Read-only: it reports differences and corrects nothing
(`usage.rollups.usage_rollup` and `budget_counters_reconcile` are the corrections).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from providers.models import Price
from providers.selectors import price_info
from usage.budgets import period_bounds, units_to_usd, usd_to_units
from usage.models import BudgetCounter, BudgetScope, DailyUsage, MonthlyUsage, UsageRecord
from usage.pricing import TOKEN_FIELDS, cost_usd
from usage.rollups import day_bounds, month_last_day

_ROLLUP_SUMS = ("requests", *TOKEN_FIELDS)


@dataclass(frozen=True, slots=True)
class RowDifference:
    request_id: str
    created_at: object
    price_id: int | None
    stored: Decimal
    recomputed: Decimal


@dataclass(frozen=True, slots=True)
class DayDifference:
    """A day whose rollup does not hold the ledger's sums."""
    day: date
    ledger: dict[str, object]
    rollup: dict[str, object]


@dataclass(frozen=True, slots=True)
class MonthDifference:
    """A month whose monthly rollup does not hold the sums of its days' rollups."""
    month: date
    daily: dict[str, object]
    monthly: dict[str, object]


@dataclass(frozen=True, slots=True)
class CounterDifference:
    scope: str
    scope_id: int
    period: str
    period_start: object
    spent: Decimal
    ledger: Decimal


@dataclass(slots=True)
class LedgerVerification:
    rows_checked: int = 0
    days_checked: int = 0
    months_checked: int = 0
    counters_checked: int = 0
    rows: list[RowDifference] = field(default_factory=list)
    days: list[DayDifference] = field(default_factory=list)
    months: list[MonthDifference] = field(default_factory=list)
    counters: list[CounterDifference] = field(default_factory=list)
    # Days with ledger rows whose rollup has not run (reports read those from the ledger):
    # listed, not a difference.
    days_not_rolled_up: list[date] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return len(self.rows) + len(self.days) + len(self.months) + len(self.counters)


def _days(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def ledger_verify(*, start: date, end: date) -> LedgerVerification:
    """Check the UTC days `start`..`end` (both included):

    - every ledger row's `cost_usd` against `usage.pricing.cost_usd` of its tokens at its price
      version (a row without a price must cost 0);
    - each rolled-up day's ledger sums (requests, tokens per class, cost in 1e-10 units)
      against its rollup (days with rows and no rollup are listed in `days_not_rolled_up`);
    - each whole month of the range: its monthly rollup against the sums of its days' rollups;
    - every budget counter whose period overlaps the range against the ledger's sum for its
      scope over its whole period.

    Reads the ledger once, in `created_at` order, in chunks."""
    result = LedgerVerification()
    prices = {p.pk: price_info(p) for p in Price.objects.all()}
    range_start, range_end = day_bounds(start)[0], day_bounds(end)[1]
    ledger: dict[date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        (*_ROLLUP_SUMS, "cost_units"), 0))
    rows = (UsageRecord.objects.between(range_start, range_end).order_by("created_at", "id")
            .values_list("request_id", "created_at", "price_id", "cost_usd", *TOKEN_FIELDS))
    for request_id, created_at, price_id, stored, *tokens in rows.iterator(chunk_size=5000):
        counts = dict(zip(TOKEN_FIELDS, tokens))
        recomputed = cost_usd(price=prices.get(price_id), **counts)
        result.rows_checked += 1
        if usd_to_units(stored) != usd_to_units(recomputed):
            result.rows.append(RowDifference(request_id, created_at, price_id, stored, recomputed))
        sums = ledger[created_at.date() if created_at.tzinfo is None
                      else created_at.astimezone(range_start.tzinfo).date()]
        sums["requests"] += 1
        for name, value in counts.items():
            sums[name] += value
        sums["cost_units"] += usd_to_units(stored)

    rollups = _rollup_sums(DailyUsage.objects.filter(day__gte=start, day__lte=end), "day")
    for day in _days(start, end):
        result.days_checked += 1
        mine, theirs = ledger.get(day), rollups.get(day)
        if theirs is None:
            if mine is not None:
                result.days_not_rolled_up.append(day)
            continue
        if mine != theirs:
            result.days.append(DayDifference(day, _readable(mine), _readable(theirs)))

    result.months_checked, result.months = _months_verify(start, end, rollups)
    result.counters_checked, result.counters = _counters_verify(range_start, range_end)
    return result


def _rollup_sums(rollup, period: str) -> dict[date, dict[str, int]]:
    """A rollup's rows summed by `period` (its day or month field); cost in 1e-10 units."""
    out: dict[date, dict[str, int]] = {}
    for at, cost, *values in rollup.values_list(period, "cost_usd", *_ROLLUP_SUMS).order_by():
        sums = out.setdefault(at, dict.fromkeys((*_ROLLUP_SUMS, "cost_units"), 0))
        for name, value in zip(_ROLLUP_SUMS, values):
            sums[name] += value
        sums["cost_units"] += usd_to_units(cost)
    return out


def _months_verify(start: date, end: date,
                   daily: dict[date, dict[str, int]]) -> tuple[int, list[MonthDifference]]:
    """The whole months of start..end: MonthlyUsage's sums against those of `daily` (the
    range's DailyUsage sums by day)."""
    monthly = _rollup_sums(MonthlyUsage.objects.filter(month__gte=start, month__lte=end), "month")
    checked, differences = 0, []
    month = start if start.day == 1 else month_last_day(start) + timedelta(days=1)
    while month_last_day(month) <= end:
        checked += 1
        days = {}
        for day in _days(month, month_last_day(month)):
            for name, value in daily.get(day, {}).items():
                days[name] = days.get(name, 0) + value
        mine, theirs = days or None, monthly.get(month)
        if mine != theirs:
            differences.append(MonthDifference(month, _readable(mine), _readable(theirs)))
        month = month_last_day(month) + timedelta(days=1)
    return checked, differences


def _readable(sums: dict[str, int] | None) -> dict[str, object]:
    sums = dict(sums or dict.fromkeys((*_ROLLUP_SUMS, "cost_units"), 0))
    sums["cost_usd"] = units_to_usd(sums.pop("cost_units"))
    return sums


def _counters_verify(range_start, range_end) -> tuple[int, list[CounterDifference]]:
    """Counters whose period overlaps [range_start, range_end), each against the ledger over
    its whole period: one grouped sum per period read."""
    checked, out = 0, []
    for counter in BudgetCounter.objects.filter(period_start__lt=range_end).order_by("pk"):
        start, end = period_bounds(counter.period, counter.period_start)
        if end is not None and end <= range_start:
            continue
        rows = UsageRecord.objects.filter(created_at__gte=start)
        if end is not None:
            rows = rows.filter(created_at__lt=end)
        scope = ({"api_key_id": counter.scope_id} if counter.scope == BudgetScope.KEY
                 else {"team_id": counter.scope_id})
        actual = sum((usd_to_units(c) for c in
                      rows.filter(**scope).values_list("cost_usd", flat=True).iterator()), 0)
        checked += 1
        if actual != counter.spent_units:
            out.append(CounterDifference(counter.scope, counter.scope_id, counter.period,
                                         counter.period_start, units_to_usd(counter.spent_units),
                                         units_to_usd(actual)))
    return checked, out
