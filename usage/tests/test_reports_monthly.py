"""The monthly rollup (exact sums of the daily one, kept in step by usage_rollup), the report's
reads of it for the whole months of a long range (every group equal to the ledger's own, on
a fixture over five months), the spend page by month for a range over 92 days, and the
migration that fills the monthly rollup from the daily one."""
from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from providers.models import ApiKey
from providers.services import api_key_create
from usage.models import DailyUsage, MonthlyUsage, UsageRecord
from usage.rollups import usage_rollup
from usage.selectors import UsageFilter, usage_report
from usage.tests.test_reports import at_day, csv_rows, ledger_write, make_user, signed_in, utc_today

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
FIRST = date(2026, 1, 20)


def _days(start: date, end: date):
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


@pytest.fixture
def months_ledger(db):
    """Ledger rows on every third day from 2026-01-20 to NOW's day (2026-05-10) for three keys
    in two teams and no key, two providers, three models, one error in seven; key `red-1`
    renamed on 2026-03-01 (its later rows carry the new name). Every day rolled up except
    2026-02-11 (rows, no rollup yet) and the last two (today and yesterday)."""
    red1, _ = api_key_create(name="red-1", team="red")
    red2, _ = api_key_create(name="red-2", team="red")
    blue, _ = api_key_create(name="blue-1", team="blue")
    keys = [red1, red2, blue, None]
    n = 0
    for day in _days(FIRST, NOW.date()):
        if (day - FIRST).days % 3:
            continue
        if day == date(2026, 3, 1):
            ApiKey.objects.filter(pk=red1.pk).update(name="red-one")
            red1.refresh_from_db()
        for hour in range(3):
            n += 1
            ledger_write(at=at_day(day, hour=hour), key=keys[n % 4],
                         provider=("prov-a", "prov-b")[n % 2], model=("m1", "m2", "m3")[n % 3],
                         cost=Decimal(n * 7919 % 100000) / 10 ** 7 + Decimal("0.0000000001") * n,
                         status="upstream_error" if n % 7 == 0 else "ok", input_tokens=n,
                         output_tokens=2 * n)
    ledger_write(at=at_day(date(2026, 2, 11), hour=5), key=blue, cost="1.2345678901")
    for day in _days(FIRST, NOW.date() - timedelta(days=2)):
        if day != date(2026, 2, 11):
            usage_rollup(day=day)
    return keys


def _ledger_groups(kept: set[int], dims: tuple[str, ...]) -> dict[tuple, tuple]:
    """The ledger's own sums of the rows `kept` by `dims`: (value, label) per dimension ->
    (requests, errors, input, output, cost)."""
    out: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0)])
    for r in UsageRecord.objects.filter(pk__in=kept):
        day = r.created_at.astimezone(timezone.utc).date()
        parts = {"day": (day, day.isoformat()),
                 "month": (day.replace(day=1), day.strftime("%Y-%m")),
                 "team": (r.team_id, r.team_name or "(no team)"),
                 "key": (r.api_key_id, f"{r.key_name} ({r.key_prefix}…)" if r.api_key_id
                         else "(no key)"),
                 "provider": (r.provider_name, r.provider_name),
                 "model": (r.public_model, r.public_model)}
        t = out[tuple(parts[d] for d in dims)]
        t[0] += 1
        t[1] += r.status != "ok"
        t[2] += r.input_tokens
        t[3] += r.output_tokens
        t[4] += r.cost_usd
    return {k: tuple(v) for k, v in out.items()}


def _report_groups(report, dims: tuple[str, ...]) -> dict[tuple, tuple]:
    return {tuple((row.values[d], row.labels[d]) for d in dims):
            (row.totals.requests, row.totals.errors, row.totals.input_tokens,
             row.totals.output_tokens, row.totals.cost_usd)
            for row in report.group(dims)}


@pytest.mark.django_db
def test_a_monthly_rollup_row_is_the_exact_sum_of_its_days_and_follows_a_re_rolled_day():
    key, _ = api_key_create(name="k", team="t")
    for day, cost, status in ((date(2026, 1, 31), "0.1000000001", "ok"),
                              (date(2026, 2, 1), "0.2000000002", "ok"),
                              (date(2026, 2, 14), "1.5", "upstream_error"),
                              (date(2026, 2, 28), "0.0000000007", "ok")):
        ledger_write(at=at_day(day, hour=23, minute=59), key=key, model="a", cost=cost,
                     status=status, input_tokens=10, output_tokens=3)
        usage_rollup(day=day)

    def monthly():
        return sorted((r.month, r.key_name, r.team_name, r.provider_name, r.public_model,
                       r.requests, r.errors, r.input_tokens, r.output_tokens, r.cost_usd)
                      for r in MonthlyUsage.objects.all())

    assert monthly() == [
        (date(2026, 1, 1), "k", "t", "prov-a", "a", 1, 0, 10, 3, Decimal("0.1000000001")),
        (date(2026, 2, 1), "k", "t", "prov-a", "a", 3, 1, 30, 9, Decimal("1.7000000009"))]
    # A late row of 14 February: rolling that day again moves February's row, exactly.
    ledger_write(at=at_day(date(2026, 2, 14), hour=1), key=key, model="a", cost="0.0000000001",
                 input_tokens=1, output_tokens=1)
    ledger_write(at=at_day(date(2026, 2, 14), hour=2), key=key, model="b", cost="2",
                 input_tokens=5, output_tokens=5)
    usage_rollup(day=date(2026, 2, 14))
    assert monthly() == [
        (date(2026, 1, 1), "k", "t", "prov-a", "a", 1, 0, 10, 3, Decimal("0.1000000001")),
        (date(2026, 2, 1), "k", "t", "prov-a", "a", 4, 1, 31, 10, Decimal("1.7000000010")),
        (date(2026, 2, 1), "k", "t", "prov-a", "b", 1, 0, 5, 5, Decimal("2"))]
    assert usage_rollup(day=date(2026, 2, 14)) == 2 and len(monthly()) == 3  # idempotent
    # Every month's rows add up to its days' rows.
    for month in (date(2026, 1, 1), date(2026, 2, 1)):
        days = DailyUsage.objects.filter(day__gte=month, day__lt=month + timedelta(days=31),
                                         day__month=month.month)
        assert (sum(d.cost_usd for d in days)
                == sum(m.cost_usd for m in MonthlyUsage.objects.filter(month=month)))


PAGE_GROUPINGS = [("month",), ("day",), ("team",), ("key",), ("provider",), ("model",),
                  ("month", "team"), ("month", "key"), ("day", "model"), ("team", "provider"),
                  ("key", "provider", "model"), ()]


@pytest.mark.django_db
@pytest.mark.parametrize("bounds", [(FIRST, NOW.date()), (date(2026, 2, 1), date(2026, 4, 30)),
                                    (date(2026, 2, 3), date(2026, 5, 9)),
                                    (date(2026, 3, 1), date(2026, 3, 31))])
@pytest.mark.parametrize("only", [{}, {"providers": ("prov-b",)}, {"key": 0}])
def test_a_report_over_whole_months_equals_the_ledger_in_every_group(months_ledger, bounds,
                                                                     only):
    flt = UsageFilter(start=bounds[0], end=bounds[1],
                      providers=only.get("providers", ()),
                      key_ids=(months_ledger[only["key"]].pk,) if "key" in only else ())
    with CaptureQueriesContext(connection) as queries:
        report = usage_report(flt=flt, groupings=PAGE_GROUPINGS, now=NOW)
    # The whole months came from the monthly rollup (the fast path is what is checked).
    assert any("usage_monthlyusage" in q["sql"] for q in queries.captured_queries)
    assert date(2026, 2, 11) in report.ledger_days or not (bounds[0] <= date(2026, 2, 11) <= bounds[1])
    ledger = UsageRecord.objects.filter(created_at__gte=at_day(flt.start),
                                        created_at__lt=at_day(flt.end + timedelta(days=1)))
    if flt.providers:
        ledger = ledger.filter(provider_name__in=flt.providers)
    if flt.key_ids:
        ledger = ledger.filter(api_key_id__in=flt.key_ids)
    kept = set(ledger.values_list("pk", flat=True))
    for dims in PAGE_GROUPINGS:
        assert _report_groups(report, dims) == _ledger_groups(kept, dims), dims


@pytest.mark.django_db
def test_the_spend_page_over_more_than_92_days_is_by_month_and_adds_up_to_the_ledger():
    today = utc_today()
    red, _ = api_key_create(name="red-app", team="red")
    blue, _ = api_key_create(name="blue-app", team="blue")
    start = (today.replace(day=1) - timedelta(days=100)).replace(day=1)
    for back in range(0, (today - start).days + 1, 9):
        day = today - timedelta(days=back)
        ledger_write(at=at_day(day, 1), key=red, cost=Decimal("1.0000000001") * (back % 5 + 1))
        ledger_write(at=at_day(day, 2), key=blue, cost="0.0042", provider="prov-b", model="m-b")
        if back >= 2:
            usage_rollup(day=day)
    client = signed_in(make_user("fin", finance=True))
    query = {"from": start, "to": today}
    page = client.get("/reports/", query)
    assert page.status_code == 200
    html = page.content.decode()
    tables = {t["dimension"]: t for t in page.context["tables"]}
    assert "day" not in tables and tables["month"]["title"] == "By month"
    months = [r["label"] for r in tables["month"]["rows"]]
    assert months == sorted(months) and months[0] == start.strftime("%Y-%m")
    assert months[-1] == today.strftime("%Y-%m") and len(months) >= 4
    ledger_sum = sum(UsageRecord.objects.values_list("cost_usd", flat=True), Decimal(0))
    assert sum(Decimal(r["usd"]) for r in tables["month"]["rows"]) == ledger_sum
    # The stacked chart's bars are the months, each adding up to its row of the table.
    block = html.split('id="stack-team"', 1)[1].split("</svg>", 1)[0]
    by_month: dict[str, Decimal] = defaultdict(Decimal)
    for month, usd in re.findall(r'data-day="([^"]*)" data-usd="([^"]*)"', block):
        by_month[month] += Decimal(usd)
    assert dict(by_month) == {r["label"]: Decimal(r["usd"]) for r in tables["month"]["rows"]}
    assert len(page.context["chart"]["days"]) == len(months)
    assert "<h2>Monthly spend</h2>" in html
    # The CSV by month and by day add up to the same total.
    for group in ("month", "day"):
        rows = csv_rows(client.get("/reports/export.csv", {**query, "group": group}))
        assert Decimal(rows[-1]["cost_usd"]) == ledger_sum
        assert sum(Decimal(r["cost_usd"]) for r in rows[:-1]) == ledger_sum
    assert [r["month"] for r in csv_rows(client.get(
        "/reports/export.csv", {**query, "group": "month"}))[:-1]] == months
    summary = client.get("/api/usage/summary", {**query, "group_by": "month"}).json()
    assert [r["month"] for r in summary["rows"]] == [f"{m}-01" for m in months]
    assert Decimal(summary["totals"]["cost_usd"]) == ledger_sum
    # 92 days or fewer: by day.
    short = client.get("/reports/", {"from": today - timedelta(days=91), "to": today})
    assert "day" in {t["dimension"] for t in short.context["tables"]}


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_monthly_rollup_from_the_daily_rows_already_there():
    before = [("usage", "0006_ledger_partitions")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    daily = executor.loader.project_state(before).apps.get_model("usage", "DailyUsage")
    for day, name, requests, cost in ((date(2026, 1, 5), "k1", 2, "0.1000000001"),
                                      (date(2026, 1, 31), "k1", 3, "0.2000000002"),
                                      (date(2026, 1, 6), "k2", 4, "0.0000000009"),
                                      (date(2026, 2, 1), "k1", 1, "1.5")):
        daily.objects.create(day=day, key_name=name, provider_name="p", public_model="m",
                             requests=requests, errors=1, input_tokens=10, output_tokens=5,
                             cost_usd=Decimal(cost))
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert sorted((r.month, r.key_name, r.requests, r.errors, r.input_tokens, r.output_tokens,
                   r.cost_usd) for r in MonthlyUsage.objects.all()) == [
        (date(2026, 1, 1), "k1", 5, 2, 20, 10, Decimal("0.3000000003")),
        (date(2026, 1, 1), "k2", 4, 1, 10, 5, Decimal("0.0000000009")),
        (date(2026, 2, 1), "k1", 1, 1, 10, 5, Decimal("1.5"))]
