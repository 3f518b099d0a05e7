"""Sealed days (issue 18): reports read a past day from its rollups once a rollup ran ten minutes
after the day ended, and from the ledger again as soon as a late row lands in it, until the
next rollup; the totals equal the ledger's at every step."""
from __future__ import annotations

import io
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.models import Sum

from usage.models import DailyUsage, LedgerDay, UsageRecord
from usage.rollups import SEAL_AFTER, day_bounds, ledger_days_unsealed, usage_rollup
from usage.selectors import UsageFilter, usage_report
from usage.services import LedgerWrite, _writes_apply
from usage.tasks import usage_rollup_task
from usage.tests.test_reports import at_day, ledger_entry, ledger_write, utc_today

pytestmark = pytest.mark.django_db


def _report(first, last):
    report = usage_report(flt=UsageFilter(start=first, end=last),
                          groupings=[("month",), ("day",), ("model",)])
    return report, {dims: {tuple(r.values.values()): r.totals.cost_usd for r in rows}
                    for dims, rows in report.groupings.items()}


def _ledger_cost(first, last) -> Decimal:
    return UsageRecord.objects.filter(
        created_at__gte=day_bounds(first)[0],
        created_at__lt=day_bounds(last)[1]).aggregate(s=Sum("cost_usd"))["s"]


def test_a_day_is_read_from_its_rollups_once_sealed_and_from_the_ledger_after_a_late_row():
    today = utc_today()
    yesterday, older = today - timedelta(days=1), today - timedelta(days=40)
    first = older.replace(day=1)  # whole months, so the monthly rollup is read
    for n, day in enumerate([first, older, yesterday - timedelta(days=1), yesterday, today]):
        ledger_write(at=at_day(day, hour=3), cost=f"0.{n + 1:02d}00000001", model=f"m{n % 2}")
    past = [first + timedelta(days=i) for i in range((yesterday - first).days + 1)]
    ended = day_bounds(yesterday)[1]
    # The beat rolled up `older` and yesterday while each was the current day: their rows.
    for day in (older, yesterday):
        usage_rollup(day=day, now=at_day(day, hour=12))
    for day in past[:-1]:
        usage_rollup(day=day)
    assert set(LedgerDay.objects.values_list("day", flat=True)) == {older, yesterday}

    # Rolled up, but within SEAL_AFTER of its end: yesterday is still read from the ledger.
    usage_rollup(day=yesterday, now=ended + SEAL_AFTER - timedelta(seconds=1))
    report, sums = _report(first, today)
    assert report.ledger_days == (yesterday, today)
    assert LedgerDay.objects.get(day=yesterday).sealed_writes is None

    # Rolled up later: sealed, read from the rollups; only today comes from the ledger.
    usage_rollup(day=yesterday, now=ended + SEAL_AFTER)
    day_row = LedgerDay.objects.get(day=yesterday)
    assert day_row.sealed_writes == day_row.late_writes == 0
    assert LedgerDay.objects.get(day=older).sealed_writes == 0
    report, sealed_sums = _report(first, today)
    assert report.ledger_days == (today,)
    assert sealed_sums == sums and report.total.cost_usd == _ledger_cost(first, today)

    # A late row (a stream across midnight, the spool, the reaper) opens the day and the
    # older one it lands in; both are read from the ledger, nothing counted twice.
    ledger_write(at=at_day(yesterday, hour=23), cost="0.5000000000", model="m0")
    ledger_write(at=at_day(older, hour=9), cost="0.2500000000", model="m1")
    assert LedgerDay.objects.get(day=yesterday).late_writes == 1
    assert LedgerDay.objects.get(day=older).late_writes == 1
    report, sums = _report(first, today)
    assert report.ledger_days == (older, yesterday, today)
    assert report.total.cost_usd == _ledger_cost(first, today) == (
        sealed_sums[()][()] + Decimal("0.75"))
    assert sums[("day",)][(older,)] == Decimal("0.0200000001") + Decimal("0.25")
    assert sum(sums[("month",)].values()) == sum(sums[("model",)].values()) == (
        report.total.cost_usd)

    # The beat task rolls up the opened days again: sealed, read from the rollups, same sums.
    usage_rollup_task()
    report, rolled_sums = _report(first, today)
    if report.ledger_days != (today,):  # within SEAL_AFTER of midnight: yesterday stays open
        assert report.ledger_days == (yesterday, today)
    assert LedgerDay.objects.get(day=older).sealed_writes == LedgerDay.objects.get(
        day=older).late_writes
    assert rolled_sums == sums


def test_a_day_no_rollup_ran_during_is_never_sealed_and_today_counts_no_late_write():
    today = utc_today()
    yesterday = today - timedelta(days=1)
    ledger_write(at=at_day(yesterday, hour=4))  # a late write, but the day has no row
    usage_rollup(day=yesterday)
    assert not LedgerDay.objects.filter(day=yesterday).exists()
    report, _ = _report(yesterday, today)
    assert report.ledger_days == (yesterday, today)

    usage_rollup(day=today)  # the beat's run during the day creates its row
    ledger_write(at=at_day(today, hour=0))
    assert LedgerDay.objects.get(day=today).late_writes == 0


def test_the_rollup_command_rolls_up_the_days_late_rows_opened():
    old = utc_today() - timedelta(days=9)
    ledger_write(at=at_day(old, hour=1), cost="0.1000000000")
    usage_rollup(day=old, now=at_day(old, hour=2))
    assert usage_rollup(day=old) == 1 and not ledger_days_unsealed(
        first=old, last=old + timedelta(days=1)) - {old + timedelta(days=1)}
    ledger_write(at=at_day(old, hour=2), cost="0.2000000000")
    out = io.StringIO()
    call_command("usage_rollup", stdout=out)
    assert f"{old}: 1 group(s)" in out.getvalue()
    day = LedgerDay.objects.get(day=old)
    assert day.sealed_writes == day.late_writes == 1
    assert DailyUsage.objects.get(day=old).cost_usd == Decimal("0.3")


def late_write_racing_rollup(entry, *, day, now) -> None:
    """A ledger transaction writes `entry` (a late row: it counts a late write) and waits before
    committing, while `usage_rollup(day=day, now=now)` runs: the rollup must wait for the
    writer's lock (it is still running a second later) and finish once the writer commits."""
    holding, release = threading.Event(), threading.Event()

    def late_writer() -> None:
        try:
            with transaction.atomic():
                _writes_apply([LedgerWrite(entry=entry)])  # counts the late write, then waits
                holding.set()
                release.wait(60)
        finally:
            connections.close_all()

    def sealer() -> None:
        try:
            usage_rollup(day=day, now=now)
        finally:
            connections.close_all()

    writer = threading.Thread(target=late_writer)
    writer.start()
    assert holding.wait(30)
    rollup = threading.Thread(target=sealer)
    rollup.start()
    rollup.join(1.0)
    assert rollup.is_alive()  # waiting for the writer's lock, not sealing without its row
    release.set()
    writer.join(30)
    rollup.join(60)
    assert not rollup.is_alive()


@pytest.mark.django_db(transaction=True)
def test_a_late_row_committing_while_its_day_is_sealed_is_in_the_rollup_or_opens_the_day():
    """MySQL-family locking (SQLite runs one writer at a time, so it has no such race): a ledger
    transaction that counted a late write holds the day's row until it commits, so the sealing
    rollup waits for it and then reads its row."""
    if connection.vendor != "mysql":
        pytest.skip("row locks: MySQL, MariaDB and TiDB")
    today = utc_today()
    yesterday = today - timedelta(days=1)
    ledger_write(at=at_day(yesterday, hour=1), cost="0.1000000000")
    usage_rollup(day=yesterday, now=at_day(yesterday, hour=12))  # the beat, during the day
    late_write_racing_rollup(ledger_entry(at=at_day(yesterday, hour=23), cost="0.2000000000"),
                             day=yesterday, now=day_bounds(yesterday)[1] + SEAL_AFTER)
    day = LedgerDay.objects.get(day=yesterday)
    assert day.late_writes == day.sealed_writes == 1
    assert DailyUsage.objects.get(day=yesterday).cost_usd == Decimal("0.3")
