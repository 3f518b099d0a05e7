"""The reports' formatting rule, the burn-down forecast (exact), and the stacked chart agreeing
with the page's tables and CSV exports to the cent."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from providers.services import api_key_create
from usage.amounts import usd_display, usd_shown
from usage.burndown import budget_forecast
from usage.tests.test_reports import at_day, ledger_write, make_user, signed_in, utc_today

MONEY = [("0", "$0.00"), ("0.0042", "$0.0042"), ("0.00421", "$0.0042"),
         ("0.004249", "$0.0042"), ("0.00425", "$0.0043"), ("0.0000123", "$0.000012"),
         ("0.0000000001", "$0.0000000001"), ("0.0099", "$0.0099"), ("0.00996", "$0.01"),
         ("0.01", "$0.01"), ("0.015", "$0.02"), ("1234.565", "$1,234.57"), ("-0.0042", "-$0.0042"),
         ("-1.5", "-$1.50"), ("1000000", "$1,000,000.00")]


@pytest.mark.parametrize("amount, shown", MONEY)
def test_amounts_of_a_cent_or_more_show_cents_and_smaller_ones_two_significant_digits(amount, shown):
    assert usd_display(Decimal(amount)) == shown


def test_a_table_cell_shows_its_apportioned_cents_unless_the_amount_is_under_a_cent():
    assert usd_shown(Decimal("0.0042"), Decimal("0.01")) == "$0.0042"
    assert usd_shown(Decimal("0.0042"), Decimal("0.00")) == "$0.0042"
    assert usd_shown(Decimal("1.005"), Decimal("1.00")) == "$1.00"
    assert usd_shown(Decimal("0"), Decimal("0")) == "$0.00"


START = datetime(2026, 3, 1, tzinfo=timezone.utc)
END = datetime(2026, 4, 1, tzinfo=timezone.utc)  # 31 days


def test_forecast_is_spend_times_period_over_elapsed_and_says_when_the_limit_is_reached():
    # 10 days of 31 elapsed, $20 spent: $2/day, $62 at the end; a $50 limit is reached after
    # 25 days (2026-03-26 00:00).
    f = budget_forecast(spent_usd=Decimal("20"), limit_usd=Decimal("50"), start=START, end=END,
                        now=START + timedelta(days=10))
    assert (f.rate_usd_per_day, f.forecast_usd, f.exhausted) == (Decimal("2"), Decimal("62"), False)
    assert f.exhausted_at == datetime(2026, 3, 26, tzinfo=timezone.utc)
    assert f.summary == "At this rate the limit is reached on 2026-03-26 00:00 UTC."
    # Within the limit: $100 limit, forecast $62.
    f = budget_forecast(spent_usd=Decimal("20"), limit_usd=Decimal("100"), start=START, end=END,
                        now=START + timedelta(days=10))
    assert f.exhausted_at is None and f.summary == "At this rate the period ends at $62.00, within the limit."
    # A third of a day in, $0.001 spent: rate $0.003/day, $0.093 at the end (exact Decimal).
    f = budget_forecast(spent_usd=Decimal("0.001"), limit_usd=Decimal("1"), start=START, end=END,
                        now=START + timedelta(hours=8))
    assert (f.rate_usd_per_day, f.forecast_usd) == (Decimal("0.003"), Decimal("0.093"))
    # Already over, no end, no time elapsed.
    assert budget_forecast(spent_usd=Decimal("5"), limit_usd=Decimal("5"), start=START, end=END,
                           now=START + timedelta(days=1)).exhausted
    assert budget_forecast(spent_usd=Decimal("5"), limit_usd=Decimal("9"), start=START, end=None,
                           now=START + timedelta(days=1)).forecast_usd is None
    assert budget_forecast(spent_usd=Decimal("0"), limit_usd=Decimal("9"), start=START, end=END,
                           now=START).forecast_usd is None


def _rects(html: str, dimension: str) -> list[tuple[str, str, Decimal]]:
    block = html.split(f'id="stack-{dimension}"', 1)[1].split("</svg>", 1)[0]
    return [(s, d, Decimal(u)) for s, d, u in re.findall(
        r'data-series="([^"]*)" data-day="([^"]*)" data-usd="([^"]*)"', block)]


@pytest.mark.django_db
def test_stacked_spend_agrees_with_the_tables_and_the_csv_to_the_cent():
    today = utc_today()
    red, _ = api_key_create(name="red-app", team="red")
    blue, _ = api_key_create(name="blue-app", team="blue")
    for back in range(3):
        day = today - timedelta(days=back)
        ledger_write(at=at_day(day, 1), key=red, cost=Decimal("1.2500000001") + back, model="gpt-x")
        ledger_write(at=at_day(day, 2), key=blue, cost="0.0042", provider="prov-b", model="claude-y")
    green, _ = api_key_create(name="green-app", team="green")
    ledger_write(at=at_day(today, 3), key=green, cost="0.0000123")
    client = signed_in(make_user("fin", finance=True))
    query = {"from": today - timedelta(days=2), "to": today}
    for dimension in ("team", "model", "key", "provider"):
        page = client.get("/reports/", {**query, "stack": dimension})
        html = page.content.decode()
        tables = {t["dimension"]: t for t in page.context["tables"]}
        assert html.count('class="stack"') == 1
        rects = _rects(html, dimension)
        by_series: dict[str, Decimal] = {}
        for series, _, usd in rects:
            by_series[series] = by_series.get(series, Decimal(0)) + usd
        # Each series sums to its table row's exact amount, and to the CSV's.
        assert by_series == {r["label"]: Decimal(r["usd"]) for r in tables[dimension]["rows"]}
        rows = list(csv.DictReader(io.StringIO(
            client.get("/reports/export.csv", {**query, "group": dimension}).content.decode())))
        assert sum(by_series.values()) == Decimal(rows[-1]["cost_usd"])
        # Each day's bar sums to that day's row of the by-day table.
        by_day: dict[str, Decimal] = {}
        for _, day, usd in rects:
            by_day[day] = by_day.get(day, Decimal(0)) + usd
        assert by_day == {r["label"]: Decimal(r["usd"]) for r in tables["day"]["rows"]}
    html = client.get("/reports/", query).content.decode()  # by team unless asked
    assert 'id="stack-team"' in html
    assert client.get("/reports/", {**query, "stack": "colour"}).status_code == 400
    # Sub-cent amounts: green's row and tooltip, blue's days; blue's $0.0126 is a cent.
    rows = {r["label"]: r["cost"] for r in tables["team"]["rows"]}
    assert (rows["green"], rows["blue"]) == ("$0.000012", "$0.01")
    assert f"<title>blue · {today}: $0.0042</title>" in html
    assert f"<title>green · {today}: $0.000012</title>" in html
