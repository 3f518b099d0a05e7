"""Sealed hours (issue 18): of the days reports read from the ledger (today, yesterday until it
is sealed), an hour a rollup sealed a quarter of an hour after it ended is read from the hourly
rollup, and from the ledger again as soon as a late row lands in it; the totals equal the
ledger's at every step."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from usage.models import HourlyUsage, LedgerDay, LedgerHour, UsageRecord
from usage.rollups import (
    HOUR, HOUR_LATE_AFTER, HOUR_SEAL_AFTER, SEAL_AFTER, day_bounds, late_days_and_hours,
    usage_rollup,
)
from usage.selectors import UsageFilter, usage_report
from usage.tests.test_ledger_day import late_write_racing_rollup
from usage.tests.test_reports import at_day, ledger_entry, ledger_write, utc_today

pytestmark = pytest.mark.django_db


def _report(first, last):
    report = usage_report(flt=UsageFilter(start=first, end=last),
                          groupings=[("day",), ("model",), ("day", "model")])
    return report, {dims: {tuple(r.values.values()): r.totals.cost_usd for r in rows}
                    for dims, rows in report.groupings.items()}


def _ledger_sums(first, last) -> dict:
    """What the report's groupings must be, summed from the ledger rows themselves."""
    rows = UsageRecord.objects.filter(created_at__gte=day_bounds(first)[0],
                                      created_at__lt=day_bounds(last)[1])
    by_model = {(m,): c for m, c in rows.values_list("public_model").annotate(c=Sum("cost_usd"))
                .order_by()}
    return {(): {(): rows.aggregate(s=Sum("cost_usd"))["s"]}, ("model",): by_model}


def test_an_hour_is_read_from_the_hourly_rollup_once_sealed_and_from_the_ledger_after_a_late_row():
    today = utc_today()
    yesterday = today - timedelta(days=1)
    start, ended = day_bounds(yesterday)
    for n, hour in enumerate((3, 10, 22, 23)):
        ledger_write(at=at_day(yesterday, hour=hour, minute=20), cost=f"0.{n + 1}000000001",
                     model=f"m{n % 2}")
    ledger_write(at=at_day(today), cost="0.0500000000", model="m0")
    # The beat rolled yesterday up during each of those hours: each hour got its row.
    for hour in (3, 10, 22, 23):
        usage_rollup(day=yesterday, now=at_day(yesterday, hour=hour, minute=30))
    assert set(LedgerHour.objects.values_list("hour", flat=True)) == {
        start + HOUR * h for h in (3, 10, 22, 23)}

    # Rolled up within SEAL_AFTER of midnight: the day is not sealed, its hours that ended
    # HOUR_SEAL_AFTER ago are (3, 10, 22; not 23). The others never had a row: the ledger.
    usage_rollup(day=yesterday, now=ended + SEAL_AFTER - timedelta(seconds=1))
    assert LedgerDay.objects.get(day=yesterday).sealed_writes is None
    assert {h.hour: (late, sealed) for h, late, sealed in LedgerHour.objects.values_list(
        "hour", "late_writes", "sealed_writes")} == {3: (0, 0), 10: (0, 0), 22: (0, 0),
                                                      23: (0, None)}
    assert HourlyUsage.objects.get(hour=start + HOUR * 10).cost_usd == Decimal("0.2000000001")
    report, sums = _report(yesterday, today)
    assert report.ledger_days == (yesterday, today)
    today_start = day_bounds(today)[0]
    assert report.ledger_ranges == (
        (start, start + HOUR * 3), (start + HOUR * 4, start + HOUR * 10),
        (start + HOUR * 11, start + HOUR * 22), (start + HOUR * 23, ended),
        (today_start, today_start + timedelta(days=1)))
    ledger = _ledger_sums(yesterday, today)
    assert sums[()] == ledger[()] and sums[("model",)] == ledger[("model",)]
    assert sums[("day",)] == {(yesterday,): Decimal("1.0000000004"), (today,): Decimal("0.05")}
    sealed_ids = set(HourlyUsage.objects.filter(hour=start + HOUR * 3).values_list("pk", flat=True))

    # A late row (the spool, the reaper, a stream longer than HOUR_LATE_AFTER) opens its hour
    # and its day: that hour is read from the ledger again, nothing counted twice.
    ledger_write(at=at_day(yesterday, hour=10, minute=50), cost="0.5000000000", model="m1")
    assert LedgerHour.objects.get(hour=start + HOUR * 10).late_writes == 1
    assert LedgerDay.objects.get(day=yesterday).late_writes == 1
    report, sums = _report(yesterday, today)
    assert report.ledger_ranges[1] == (start + HOUR * 4, start + HOUR * 22)
    ledger = _ledger_sums(yesterday, today)
    assert sums[()] == ledger[()] == {(): Decimal("1.5500000004")}
    assert sums[("model",)] == ledger[("model",)]
    assert sums[("day", "model")][(yesterday, "m1")] == Decimal("1.1000000002")

    # The next rollup writes the hours that are not sealed and seals the opened one again; a
    # sealed hour's rows are left as they were.
    usage_rollup(day=yesterday, now=ended + SEAL_AFTER - timedelta(seconds=1))
    hour_row = LedgerHour.objects.get(hour=start + HOUR * 10)
    assert hour_row.late_writes == hour_row.sealed_writes == 1
    assert HourlyUsage.objects.get(hour=start + HOUR * 10, public_model="m1").cost_usd == (
        Decimal("0.7000000001"))
    assert set(HourlyUsage.objects.filter(hour=start + HOUR * 3).values_list(
        "pk", flat=True)) == sealed_ids
    report, resealed = _report(yesterday, today)
    assert report.ledger_ranges[1] == (start + HOUR * 4, start + HOUR * 10)
    assert resealed == sums


def test_a_filtered_report_reads_the_hourly_rollup_with_the_same_filter():
    today = utc_today()
    yesterday = today - timedelta(days=1)
    start = day_bounds(yesterday)[0]
    ledger_write(at=at_day(yesterday, hour=5), cost="0.1000000000", model="m0", provider="p1")
    ledger_write(at=at_day(yesterday, hour=5), cost="0.2000000000", model="m1", provider="p2")
    usage_rollup(day=yesterday, now=at_day(yesterday, hour=5, minute=1))
    usage_rollup(day=yesterday, now=start + HOUR * 6 + HOUR_SEAL_AFTER)
    assert LedgerHour.objects.get(hour=start + HOUR * 5).sealed_writes == 0
    for flt, cost in ((UsageFilter(start=yesterday, end=yesterday, providers=("p2",)), "0.2"),
                      (UsageFilter(start=yesterday, end=yesterday, models=("m0",)), "0.1")):
        report = usage_report(flt=flt, groupings=[("provider",)],
                              now=start + HOUR * 6 + HOUR_SEAL_AFTER)
        assert (start + HOUR * 5, start + HOUR * 6) not in report.ledger_ranges
        assert report.total.cost_usd == Decimal(cost) and report.total.requests == 1


def test_a_write_is_late_for_its_hour_only_past_the_margin_and_for_its_day_past_midnight():
    day = utc_today() - timedelta(days=3)
    ten, eleven = at_day(day, hour=10), at_day(day, hour=11)
    created = [ten + timedelta(minutes=59)]
    assert late_days_and_hours(created, eleven + HOUR_LATE_AFTER - timedelta(seconds=1)) == (
        set(), set())
    assert late_days_and_hours(created, eleven + HOUR_LATE_AFTER) == (set(), {ten})
    midnight = day_bounds(day)[1]
    last = [midnight - timedelta(seconds=1)]
    assert late_days_and_hours(last, midnight) == ({day}, set())
    assert late_days_and_hours(last, midnight + HOUR_LATE_AFTER) == ({day}, {midnight - HOUR})


def test_the_rollup_of_a_new_day_deletes_the_hours_of_the_days_before_yesterday():
    today = utc_today()
    old, yesterday = today - timedelta(days=3), today - timedelta(days=1)
    for day in (old, yesterday):
        ledger_write(at=at_day(day, hour=1), cost="0.1000000000")
        usage_rollup(day=day, now=at_day(day, hour=1, minute=5))  # each, while it was today
    assert HourlyUsage.objects.count() == LedgerHour.objects.count() == 2
    usage_rollup(day=today, now=at_day(today, hour=0, minute=5))
    assert set(HourlyUsage.objects.values_list("hour", flat=True)) == {at_day(yesterday, hour=1)}
    assert set(LedgerHour.objects.values_list("hour", flat=True)) == {
        at_day(yesterday, hour=1), at_day(today)}
    # A day before yesterday is not rolled up by hour.
    usage_rollup(day=old, now=at_day(today, hour=0, minute=6))
    assert not HourlyUsage.objects.filter(hour__lt=day_bounds(yesterday)[0]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_late_row_committing_while_its_hour_is_sealed_is_in_the_rollup_or_opens_the_hour():
    """As for days (test_ledger_day): a ledger transaction that counted a late write holds the
    hour's row until it commits, so the sealing rollup waits for it and then reads its row."""
    if connection.vendor != "mysql":
        pytest.skip("row locks: MySQL, MariaDB and TiDB")
    yesterday = utc_today() - timedelta(days=1)
    start, ended = day_bounds(yesterday)
    ledger_write(at=at_day(yesterday, hour=8), cost="0.1000000000")
    usage_rollup(day=yesterday, now=at_day(yesterday, hour=8, minute=30))
    late_write_racing_rollup(
        ledger_entry(at=at_day(yesterday, hour=8, minute=40), cost="0.2000000000"),
        day=yesterday, now=ended + SEAL_AFTER - timedelta(seconds=1))
    hour = LedgerHour.objects.get(hour=start + HOUR * 8)
    assert hour.late_writes == hour.sealed_writes == 1
    assert HourlyUsage.objects.get(hour=start + HOUR * 8).cost_usd == Decimal("0.3")
    report = usage_report(flt=UsageFilter(start=yesterday, end=yesterday), groupings=[()])
    assert (start + HOUR * 8, start + HOUR * 9) not in report.ledger_ranges
    assert report.total.cost_usd == Decimal("0.3")
