"""Hourly, daily and monthly aggregates of the ledger (what reports read), hourly operations
aggregates (latency, time to first token and errors per provider and model, what the operations
page reads) and counter reconciliation."""
from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db import transaction
from django.db.models import BigIntegerField, F, Sum, Value
from django.db.models.functions import Cast, Round
from django.utils import timezone

from usage.archive import archived_months, day_archived, month_bounds
from usage.budgets import UNITS_PER_USD, period_bounds, units_to_usd, usd_to_units
from usage.budgets_redis import shared_spend_forget
from usage.models import (
    BudgetCounter, BudgetScope, DailyUsage, HourlyOperations, HourlyUsage, LedgerDay, LedgerHour,
    MonthlyUsage, UsageRecord, UsageStatus,
)

logger = logging.getLogger(__name__)

# What a rollup row groups by, then what it sums.
GROUP_FIELDS = ("api_key_id", "key_prefix", "key_name", "team_id", "team_name", "provider_name",
                "public_model")
TOKEN_SUMS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_5m_tokens",
              "cache_write_1h_tokens", "reasoning_tokens", "audio_input_tokens",
              "audio_output_tokens", "image_input_tokens", "image_output_tokens")
# A day's rollup seals it (LedgerDay) only when it starts this long after the day ended.
SEAL_AFTER = timedelta(minutes=10)
# Hours (LedgerHour): a write of an hour's rows is late only this long after the hour ended (a
# request running across the hour's end is not), and a rollup seals an hour only when it starts
# HOUR_SEAL_AFTER past its end: SEAL_AFTER's margin for clocks beyond the writers' one.
HOUR = timedelta(hours=1)
HOUR_LATE_AFTER = timedelta(minutes=5)
HOUR_SEAL_AFTER = HOUR_LATE_AFTER + SEAL_AFTER
# The days rolled up by hour (HourlyUsage), and read by hour by reports: today and yesterday.
# A rollup of today deletes the hours of the days before the day before (one day to spare, for
# clocks that disagree about which day it is).
HOURLY_DAYS = 2
# Upper edges (ms, exclusive) of the latency and time-to-first-token buckets of HourlyOperations:
# bucket i counts values in [edge i-1, edge i), bucket 0 starts at 0 and the last one (past the
# last edge) is open. Fixed, so buckets of any hours and models add up; roughly 1.5-2x apart, so
# a percentile interpolated inside a bucket is off by at most the bucket's width.
LATENCY_EDGES_MS = (10, 25, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000,
                    7500, 10000, 15000, 20000, 30000, 60000, 120000, 300000)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=timezone.get_fixed_timezone(0))
    return start, start + timedelta(days=1)


def day_hours(day: date) -> list[datetime]:
    """The starts of the 24 UTC hours of `day`."""
    start = day_bounds(day)[0]
    return [start + HOUR * i for i in range(24)]


def hourly_first_day(today: date) -> date:
    """The first of the days rolled up, and read by reports, by hour (HOURLY_DAYS up to
    `today`)."""
    return today - timedelta(days=HOURLY_DAYS - 1)


def month_last_day(month: date) -> date:
    """The last day of `month`'s month."""
    following = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


def cost_units_sum():
    """SUM of cost_usd as an integer count of 1e-10 USD. ROUND(cost * 1e10) recovers the exact
    quantum on SQLite too (whose decimals are floats with 15 significant digits); integer sums
    are exact everywhere."""
    return Sum(Cast(Round(F("cost_usd") * Value(int(UNITS_PER_USD))), BigIntegerField()))


def usage_rollup(*, day: date, now: datetime | None = None) -> int:
    """Recompute the aggregates of one UTC day from the ledger. Idempotent: running it twice,
    or again after late rows arrived, leaves exactly the ledger's totals. Costs are summed as
    Decimal in Python (SQLite would sum them as floats). Returns the number of groups.

    Run at least SEAL_AFTER past the day's end (`now`), it also seals the day (LedgerDay):
    reports then read the day from its rollups until a late write opens it again. A day of the
    last HOURLY_DAYS is also rolled up by hour (HourlyUsage), and each of its hours that ended
    HOUR_SEAL_AFTER before `now` sealed (LedgerHour), so that reports read from the ledger only
    the hours that are not."""
    if day_archived(day):
        # Its month's rows left the ledger (manage.py ledger_archive): its rollups are final,
        # and stand for the day even if a late row landed in it since.
        LedgerDay.objects.filter(day=day).update(sealed_writes=F("late_writes"))
        return DailyUsage.objects.filter(day=day).count()
    now = now or timezone.now()
    today = timezone.localtime(now, dt_timezone.utc).date()
    seal = _seal_point(day, now)
    hours = _hour_seal_points(day, now) if day >= hourly_first_day(today) else None
    with transaction.atomic():
        groups = _daily_rollup(day, hours=None if hours is None else hours[0])
        monthly_rollup(month=day.replace(day=1))
        operations_rollup(day=day)
        if seal is not None:
            LedgerDay.objects.filter(day=day).update(sealed_writes=seal)
        for hour, late in (hours[1].items() if hours else ()):
            LedgerHour.objects.filter(hour=hour).update(sealed_writes=late)
    if day == today:
        kept = day_bounds(hourly_first_day(today) - timedelta(days=1))[0]  # one day to spare
        HourlyUsage.objects.filter(hour__lt=kept).delete()
        LedgerHour.objects.filter(hour__lt=kept).delete()
    return groups


def _seal_point(day: date, now: datetime) -> int | None:
    """The day's `late_writes` before its rollup reads the ledger, or None while the day may
    still get rows written on time (until SEAL_AFTER past its end, which covers the clocks of
    processes that disagree by less than that) or has no LedgerDay row.

    The row is created while the day is current (the beat rolls today up every few minutes),
    and only then: a ledger transaction counts a late write by updating the row that is
    already there, so it takes one lock and never upgrades one (two writers of late rows
    cannot deadlock). Read with a lock, in a transaction of its own that ends before the
    rollup's: a ledger transaction that counted a late write and has not committed holds the
    row, so its rows are committed, and read by the rollup, or counted after this point, and
    the day is not sealed. A day that ended with no row (no rollup ran during it) is never
    sealed: reports read it from the ledger while it is yesterday, and from its rollup after."""
    end = day_bounds(day)[1]
    if now < end:
        LedgerDay.objects.bulk_create([LedgerDay(day=day)], ignore_conflicts=True)
        return None
    if now < end + SEAL_AFTER:
        return None
    with transaction.atomic():
        row = LedgerDay.objects.select_for_update().filter(day=day).first()
        return None if row is None else row.late_writes


def _hour_seal_points(day: date, now: datetime) -> tuple[set[datetime], dict[datetime, int]]:
    """`_seal_point` for the hours of `day`: creates the LedgerHour row of the current hour
    (only while it is current, as a day's), then, in a transaction of its own, reads with a
    lock the rows of the hours that ended HOUR_SEAL_AFTER before `now`. Returns the hours the
    rollup must write (every hour of the day but those sealed already: their HourlyUsage rows
    hold the hour's rows, as no late write landed since) and the `late_writes` to seal each
    hour at that it writes and may seal."""
    start, end = day_bounds(day)
    current = _hour(now)
    if start <= current < end:
        LedgerHour.objects.bulk_create([LedgerHour(hour=current)], ignore_conflicts=True)
    with transaction.atomic():
        rows = list(LedgerHour.objects.select_for_update()
                    .filter(hour__gte=start, hour__lt=end, hour__lte=now - HOUR - HOUR_SEAL_AFTER)
                    .order_by("hour").values_list("hour", "late_writes", "sealed_writes"))
    sealed = {hour for hour, late, sealed_at in rows if sealed_at == late}
    return (set(day_hours(day)) - sealed,
            {hour: late for hour, late, sealed_at in rows if sealed_at != late})


def ledger_hours_sealed(*, start: datetime, end: datetime) -> set[datetime]:
    """The hours in [start, end) whose HourlyUsage rows hold all their ledger rows (sealed: no
    late write since the rollup that sealed them), in one query over LedgerHour."""
    return {hour for hour, late, sealed in LedgerHour.objects.filter(
        hour__gte=start, hour__lt=end, sealed_writes__isnull=False).values_list(
        "hour", "late_writes", "sealed_writes") if late == sealed}


def ledger_days_unsealed(*, first: date | None, last: date) -> set[date]:
    """Days in [first, last] (`first` None: from the first) that a rollup must not stand for,
    in one query over LedgerDay: those a late write opened since their last sealing rollup,
    and `last` itself unless it is sealed (the day before today, whose rows may still be
    arriving)."""
    unsealed = {last}
    days = LedgerDay.objects.filter(day__lte=last)
    if first is not None:
        days = days.filter(day__gte=first)
    for day, late, sealed in days.values_list("day", "late_writes", "sealed_writes"):
        if sealed is not None and late == sealed:
            unsealed.discard(day)
        else:
            unsealed.add(day)
    return unsealed


def rollup_days_due(*, today: date) -> list[date]:
    """What the beat task and `manage.py usage_rollup` roll up by default: today, yesterday
    (late rows land in both) and every older day a late row opened since its last rollup."""
    return sorted(ledger_days_unsealed(first=None, last=today - timedelta(days=1)) | {today})


def ledger_late_count(*, days: set[date], hours: set[datetime]) -> None:
    """Count one late write for each of `days` (ended UTC days) and `hours` (hours that ended
    HOUR_LATE_AFTER ago or more) in the caller's ledger transaction: one UPDATE per day then
    per hour, each in order (two writers never wait on each other in a cycle). A day or hour
    without its row is never sealed, so it needs no count."""
    for day in sorted(days):
        LedgerDay.objects.filter(day=day).update(late_writes=F("late_writes") + 1)
    for hour in sorted(hours):
        LedgerHour.objects.filter(hour=hour).update(late_writes=F("late_writes") + 1)


def late_days_and_hours(created: list[datetime], now: datetime) -> tuple[set[date], set[datetime]]:
    """The UTC days and hours that rows created at `created`, written at `now`, count as late
    writes of (ledger_late_count): days before today, and hours before the one
    HOUR_LATE_AFTER ago (usually none of either)."""
    today = day_bounds(now.astimezone(dt_timezone.utc).date())[0]
    hour = _hour(now - HOUR_LATE_AFTER)
    return ({at.astimezone(dt_timezone.utc).date() for at in created if at < today},
            {_hour(at) for at in created if at < hour})


def _daily_rollup(day: date, *, hours: set[datetime] | None = None) -> int:
    """The day's DailyUsage rows from the ledger, and the HourlyUsage rows of `hours` (hours of
    the day) with them. Returns the number of day groups."""
    start, end = day_bounds(day)
    width = len(GROUP_FIELDS)

    def zeros() -> list:
        return [0, 0, *[0] * len(TOKEN_SUMS), Decimal(0)]

    totals: dict[tuple, list] = defaultdict(zeros)
    hourly: dict[tuple, list] = defaultdict(zeros)
    rows = (UsageRecord.objects.between(start, end)
            .values_list(*GROUP_FIELDS, "status", *TOKEN_SUMS, "cost_usd", "created_at").order_by())
    for row in rows.iterator(chunk_size=5000):
        sums = [totals[row[:width]]]
        if hours:
            hour = _hour(row[-1])
            if hour in hours:
                sums.append(hourly[(hour, row[:width])])
        for t in sums:
            t[0] += 1
            t[1] += row[width] != UsageStatus.OK
            for i, value in enumerate(row[width + 1:-1], start=2):
                t[i] += value
    DailyUsage.objects.filter(day=day).delete()
    DailyUsage.objects.bulk_create([_rolled(DailyUsage, k, t, day=day)
                                    for k, t in totals.items()], batch_size=2000)
    if hours:
        HourlyUsage.objects.filter(hour__in=sorted(hours)).delete()
        HourlyUsage.objects.bulk_create([_rolled(HourlyUsage, k, t, hour=hour)
                                         for (hour, k), t in hourly.items()], batch_size=2000)
    return len(totals)


def _rolled(model, group: tuple, t: list, **period):
    """A rollup row of `model` for one GROUP_FIELDS group and its totals (requests, errors,
    TOKEN_SUMS, cost) over `period`."""
    return model(**period, **dict(zip(GROUP_FIELDS, group)), requests=t[0], errors=t[1],
                 **dict(zip(TOKEN_SUMS, t[2:-1])), cost_usd=t[-1])


@transaction.atomic
def monthly_rollup(*, month: date, daily=DailyUsage, monthly=MonthlyUsage) -> int:
    """Recompute the MonthlyUsage rows of `month`'s month as the sums of its DailyUsage rows,
    grouped by the database (costs as integer units, exact on every backend). usage_rollup
    calls it for the month of the day it rewrote, in the same transaction, so the two tables
    always agree. `daily`/`monthly`: the models (a migration passes its historical ones).
    Returns the number of groups."""
    first = month.replace(day=1)
    sums = {"requests_sum": Sum("requests"), "errors_sum": Sum("errors"),
            **{f"{name}_sum": Sum(name) for name in TOKEN_SUMS}, "units": cost_units_sum()}
    rows = (daily.objects.filter(day__gte=first, day__lte=month_last_day(first))
            .values_list(*GROUP_FIELDS).annotate(**sums).order_by())
    width = len(GROUP_FIELDS)
    monthly.objects.filter(month=first).delete()
    created = monthly.objects.bulk_create([
        monthly(month=first, **dict(zip(GROUP_FIELDS, row[:width])),
                requests=int(row[width]), errors=int(row[width + 1]),
                **{name: int(v) for name, v in zip(TOKEN_SUMS, row[width + 2:-1])},
                cost_usd=units_to_usd(int(row[-1])))
        for row in rows], batch_size=2000)
    return len(created)


def bucket_index(value_ms: int) -> int:
    """The LATENCY_EDGES_MS bucket of a value: the first edge above it."""
    return bisect.bisect_right(LATENCY_EDGES_MS, value_ms)


def percentile_from_buckets(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of values counted in LATENCY_EDGES_MS buckets, interpolated
    linearly inside the bucket that holds it: with n values the rank is q * n, and a bucket
    [lo, hi) holding c values from rank r0 gives lo + (rank - r0) / c * (hi - lo). A rank in
    the open last bucket gives its lower edge (the value is at least that). None without
    values."""
    n = sum(buckets)
    if not n:
        return None
    rank = q * n
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(LATENCY_EDGES_MS):
                return float(LATENCY_EDGES_MS[-1])
            lo = LATENCY_EDGES_MS[i - 1] if i else 0
            return lo + (rank - seen) / count * (LATENCY_EDGES_MS[i] - lo)
        seen += count
    return float(LATENCY_EDGES_MS[-1])


@dataclass(slots=True)
class OperationsTotals:
    """One hour, provider and model of the ledger: what HourlyOperations stores."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    ttft_count: int = 0
    ttft_sum_ms: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))

    def count(self, *, status: str, latency_ms: int, ttft_ms: int | None) -> None:
        self.requests += 1
        self.errors += status != UsageStatus.OK
        self.latency_sum_ms += latency_ms
        self.latency_buckets[bucket_index(latency_ms)] += 1
        if ttft_ms is not None:
            self.ttft_count += 1
            self.ttft_sum_ms += ttft_ms
            self.ttft_buckets[bucket_index(ttft_ms)] += 1

    def add(self, other: OperationsTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_sum_ms += other.latency_sum_ms
        self.ttft_count += other.ttft_count
        self.ttft_sum_ms += other.ttft_sum_ms
        for mine, theirs in ((self.latency_buckets, other.latency_buckets),
                             (self.ttft_buckets, other.ttft_buckets)):
            for i, value in enumerate(theirs):
                mine[i] += value


def _hour(at: datetime) -> datetime:
    return timezone.localtime(at, dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def operations_hours(start: datetime, end: datetime) -> dict[tuple, OperationsTotals]:
    """The ledger rows created in [start, end), counted by (UTC hour, provider, model)."""
    totals: dict[tuple, OperationsTotals] = defaultdict(OperationsTotals)
    rows = (UsageRecord.objects.between(start, end)
            .values_list("created_at", "provider_name", "public_model", "status", "latency_ms",
                         "ttft_ms").order_by())
    for at, provider, model, status, latency_ms, ttft_ms in rows.iterator(chunk_size=5000):
        totals[(_hour(at), provider, model)].count(status=status, latency_ms=latency_ms,
                                                   ttft_ms=ttft_ms)
    return totals


@transaction.atomic
def operations_rollup(*, day: date) -> int:
    """Recompute the HourlyOperations rows of one UTC day from the ledger (called by
    usage_rollup, so the Celery beat task and `manage.py usage_rollup` fill both). Idempotent.
    Returns the number of groups."""
    totals = operations_hours(*day_bounds(day))
    start, end = day_bounds(day)
    HourlyOperations.objects.filter(hour__gte=start, hour__lt=end).delete()
    HourlyOperations.objects.bulk_create([
        HourlyOperations(hour=hour, provider_name=provider, public_model=model,
                         requests=t.requests, errors=t.errors, latency_sum_ms=t.latency_sum_ms,
                         latency_buckets=t.latency_buckets, ttft_count=t.ttft_count,
                         ttft_sum_ms=t.ttft_sum_ms, ttft_buckets=t.ttft_buckets)
        for (hour, provider, model), t in totals.items()])
    return len(totals)


def budget_counters_reconcile() -> int:
    """Set each counter's `spent` to the ledger's sum for its scope and period, fixing drift
    (e.g. rows that landed from the spool after a crash). Each counter is locked while it is
    compared, so a concurrent settlement is counted exactly once. Safe to run twice. Returns the
    number of counters corrected."""
    corrected = 0
    archived = [month_bounds(m) for m in archived_months()]
    for counter_id in list(BudgetCounter.objects.values_list("pk", flat=True)):
        with transaction.atomic():
            counter = BudgetCounter.objects.select_for_update().get(pk=counter_id)
            start, end = period_bounds(counter.period, counter.period_start)
            if any(a_end > start and (end is None or a_start < end)
                   for a_start, a_end in archived):
                continue  # some of its period's rows are archived: the ledger no longer adds up
            rows = UsageRecord.objects.filter(created_at__gte=start)
            if end is not None:
                rows = rows.filter(created_at__lt=end)
            scope = ({"api_key_id": counter.scope_id} if counter.scope == BudgetScope.KEY
                     else {"team_id": counter.scope_id})
            actual = sum((usd_to_units(c) for c in rows.filter(**scope).values_list("cost_usd", flat=True)), 0)
            if actual != counter.spent_units:
                delta = actual - counter.spent_units
                logger.warning("budget counter %s drifted by %s units; corrected", counter.pk, delta)
                counter.spent_units = actual
                counter.save(update_fields=["spent_units", "updated_at"])
                shared_spend_forget(scope=counter.scope, scope_id=counter.scope_id,
                                    period=counter.period, period_start=counter.period_start)
                corrected += 1
    return corrected
