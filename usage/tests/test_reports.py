"""Finance reports: access policy, totals that add up in every grouping (property test over
random ledgers), CSV exports, the streamed raw ledger and budget status."""
from __future__ import annotations

import csv
import io
import itertools
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from providers.models import ApiKey, Price
from providers.services import api_key_create
from usage.budgets import BudgetLimit, budget_reserve, usd_to_units
from usage.models import DailyUsage, MonthlyUsage, UsageRecord
from usage.rollups import usage_rollup
from usage.selectors import DIMENSIONS, UsageFilter, cents_apportioned, usage_report
from usage.services import LedgerEntry, usage_record_write

_ids = itertools.count(1)
PAGES = ["/reports/", "/reports/export.csv?group=team", "/reports/ledger.csv",
         "/reports/budgets/", "/reports/budgets.csv"]


def ledger_write(**fields) -> LedgerEntry:
    """One ledger row (`ledger_entry`'s fields) through the real write service."""
    entry = ledger_entry(**fields)
    usage_record_write(entry=entry)
    return entry


def ledger_entry(*, at: datetime, key=None, provider: str = "prov-a", model: str = "model-x",
                 cost: str | Decimal = "0.0100000000", status: str = "ok", input_tokens: int = 10,
                 output_tokens: int = 5, price_id: int | None = None) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"rep-{next(_ids)}", client_request_id="", created_at=at,
        api_key_id=key.id if key else None, key_prefix=key.prefix if key else "",
        key_name=key.name if key else "", team_id=key.team_id if key else None,
        team_name=key.team.name if key and key.team_id else "", surface="openai.chat",
        public_model=model,
        upstream_model=f"up-{model}", provider_name=provider, route_id=None, stream=False,
        status=status, http_status=200 if status == "ok" else 502, error_type="",
        input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=0,
        reasoning_tokens=0, usage_source="reported", cost_usd=Decimal(cost), price_id=price_id,
        latency_ms=5, ttft_ms=None)


def make_user(username: str, *, staff: bool = True, finance: bool = False,
              superuser: bool = False, password: str | None = None) -> User:
    user = User.objects.create_user(username, password=password, is_staff=staff,
                                    is_superuser=superuser)
    if finance:
        # get_or_create: transactional tests flush the group that migration usage/0002 made.
        user.groups.add(Group.objects.get_or_create(name="finance")[0])
    return user


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


def at_day(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=timezone.utc)


def csv_rows(response) -> list[dict]:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return list(csv.DictReader(io.StringIO(content.decode())))


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_anonymous_users_are_sent_to_sign_in(path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/reports/")


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_staff_outside_finance_get_403(path):
    assert signed_in(make_user("ops", staff=True)).get(path).status_code == 403


@pytest.mark.django_db
def test_the_finance_group_comes_from_a_migration():
    assert Group.objects.filter(name="finance").exists()


@pytest.mark.django_db
def test_finance_staff_and_superusers_may_read_but_not_a_non_staff_finance_member():
    assert signed_in(make_user("fin", finance=True)).get("/reports/").status_code == 200
    assert signed_in(make_user("root", superuser=True)).get("/reports/").status_code == 200
    assert signed_in(make_user("outsider", staff=False, finance=True)).get("/reports/").status_code == 403


NOW = datetime(2026, 3, 20, 12, 0, tzinfo=timezone.utc)
# 70 days: a range may hold the whole of February, which the report then reads from the monthly
# rollup (the days of it not rolled up from the ledger).
DAYS = [NOW.date() - timedelta(days=n) for n in range(69, -1, -1)]

ledger_row = st.fixed_dictionaries({
    "day": st.sampled_from(DAYS),
    "minute": st.integers(0, 719),
    "key": st.integers(0, 3),
    "provider": st.sampled_from(["prov-a", "prov-b"]),
    "model": st.sampled_from(["m1", "m2", "m3"]),
    "units": st.integers(0, 5 * 10 ** 10),
    "status": st.sampled_from(["ok", "ok", "upstream_error"]),
    "tokens": st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
})


@pytest.mark.django_db
@hsettings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(rows=st.lists(ledger_row, max_size=25), rolled=st.sets(st.sampled_from(DAYS)),
       bounds=st.tuples(st.sampled_from(DAYS), st.sampled_from(DAYS)),
       only_provider=st.sampled_from([None, "prov-a"]))
def test_totals_in_every_grouping_equal_the_ledger_sum(rows, rolled, bounds, only_provider):
    UsageRecord.objects.all().delete()
    DailyUsage.objects.all().delete()
    MonthlyUsage.objects.all().delete()
    keys = list(ApiKey.objects.filter(name__in=["a", "b", "c"]).order_by("name"))
    if not keys:
        keys = [api_key_create(name="a", team="red")[0], api_key_create(name="b", team="red")[0],
                api_key_create(name="c", team="blue")[0]]
    for row in rows:
        ledger_write(at=at_day(row["day"]) + timedelta(minutes=row["minute"]),
                     key=keys[row["key"]] if row["key"] < 3 else None, provider=row["provider"],
                     model=row["model"], cost=Decimal(row["units"]) / 10 ** 10,
                     status=row["status"], input_tokens=row["tokens"][0],
                     output_tokens=row["tokens"][1])
    # Some days rolled up, others not yet: the report must read the ledger for those.
    for day in rolled:
        usage_rollup(day=day)
    start, end = sorted(bounds)
    flt = UsageFilter(start=start, end=end, providers=(only_provider,) if only_provider else ())
    ledger = UsageRecord.objects.filter(created_at__gte=at_day(start),
                                        created_at__lt=at_day(end + timedelta(days=1)))
    if only_provider:
        ledger = ledger.filter(provider_name=only_provider)
    expected_cost = sum((r.cost_usd for r in ledger), Decimal(0))
    expected_tokens = sum(r.input_tokens + r.output_tokens for r in ledger)

    groupings = [dims for size in (1, 2, 5) for dims in itertools.combinations(DIMENSIONS, size)]
    # All at once the report reads the ledger (some group by tag); without tag and end user,
    # the rollups (daily, and monthly for whole months) for the days rolled up.
    rolled_up = [dims for dims in groupings if not set(dims) & {"tag", "end_user"}]
    for asked in (groupings, rolled_up):
        report = usage_report(flt=flt, groupings=asked, now=NOW)
        assert report.total.cost_usd == expected_cost
        assert report.total.requests == ledger.count()
        for dims in asked:
            groups = report.group(dims)
            assert sum((g.totals.cost_usd for g in groups), Decimal(0)) == expected_cost, dims
            assert sum(g.totals.total_tokens for g in groups) == expected_tokens, dims
            assert sum(g.totals.requests for g in groups) == ledger.count(), dims
            cents = cents_apportioned([g.totals.cost_usd for g in groups])
            assert sum(cents, Decimal(0)) == expected_cost.quantize(Decimal("0.01")) or not groups


def test_cents_apportioned_add_up_to_the_rounded_total_and_stay_within_a_cent():
    amounts = [Decimal("0.004")] * 3 + [Decimal("1.005"), Decimal("2.3349999999")]
    cents = cents_apportioned(amounts)
    assert sum(cents) == sum(amounts).quantize(Decimal("0.01"))
    assert all(abs(c - a) < Decimal("0.01") for c, a in zip(cents, amounts))


@pytest.fixture
def small_ledger(db):
    """Two teams, three keys, two providers over three days (today included), rolled up."""
    today = utc_today()
    red1, _ = api_key_create(name="red-1", team="red")
    red2, _ = api_key_create(name="red-2", team="red")
    blue, _ = api_key_create(name="blue-1", team="blue")
    price = Price.objects.create(upstream_model="up-model-x", input_per_mtok=Decimal("1"),
                                 output_per_mtok=Decimal("2"))
    for n, (key, provider, model, cost) in enumerate([
            (red1, "prov-a", "model-x", "0.0033333333"), (red1, "prov-b", "model-y", "1.0000000001"),
            (red2, "prov-a", "model-x", "0.0033333333"), (blue, "prov-a", "model-y", "2.5"),
            (blue, "prov-b", "model-x", "0.0033333334"), (None, "prov-a", "model-x", "0.125")]):
        for back in range(3):
            ledger_write(at=at_day(today - timedelta(days=back), hour=n), key=key,
                         provider=provider, model=model, cost=cost, price_id=price.pk)
    for back in range(3):
        usage_rollup(day=today - timedelta(days=back))
    return {"red1": red1, "red2": red2, "blue": blue, "price": price, "today": today}


@pytest.mark.django_db
@pytest.mark.parametrize("group", [*DIMENSIONS, "team,provider", "day,key,model"])
def test_each_csv_export_adds_up_to_its_total_row_and_the_ledger(small_ledger, group):
    today = small_ledger["today"]
    client = signed_in(make_user("fin", finance=True))
    response = client.get("/reports/export.csv",
                          {"group": group, "from": today - timedelta(days=2), "to": today})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = csv_rows(response)
    total, rows = rows[-1], rows[:-1]
    assert next(iter(total.values())) == "Total"
    ledger_sum = sum(UsageRecord.objects.values_list("cost_usd", flat=True), Decimal(0))
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(total["cost_usd"]) == ledger_sum
    assert sum(int(r["requests"]) for r in rows) == int(total["requests"]) == 18


@pytest.mark.django_db
def test_filters_combine_and_change_the_figures(small_ledger):
    today = small_ledger["today"]
    client = signed_in(make_user("fin", finance=True))
    red = small_ledger["red1"].team_id
    response = client.get("/reports/export.csv", {"group": "key", "team": red,
                                                   "provider": "prov-a", "from": today, "to": today})
    rows = csv_rows(response)
    assert [(r["key"], r["cost_usd"]) for r in rows[:-1]] == [
        ("red-1 (" + small_ledger["red1"].prefix + "…)", "0.0033333333"),
        ("red-2 (" + small_ledger["red2"].prefix + "…)", "0.0033333333")]
    assert rows[-1]["cost_usd"] == "0.0066666666"


@pytest.mark.django_db
def test_report_page_tables_show_cents_that_add_up_and_sort(small_ledger):
    today = small_ledger["today"]
    client = signed_in(make_user("fin", finance=True))
    page = client.get("/reports/", {"from": today - timedelta(days=2), "to": today,
                                    "sort_team": "label"})
    assert page.status_code == 200
    html = page.content.decode()
    # Ledger sum 3 x 3.6350000001 = 10.9050000003 -> $10.91 in every table's footer.
    assert html.count('<td class="num cost total">$10.91</td>') == 5
    tables = {t["dimension"]: t for t in page.context["tables"]}
    assert [r["label"] for r in tables["team"]["rows"]] == ["blue", "red", "(no team)"]
    assert [r["label"] for r in tables["key"]["rows"]][0].startswith("blue-1")  # most spend first
    for table in tables.values():
        cents = sum(Decimal(r["cost"].lstrip("$").replace(",", "")) for r in table["rows"])
        assert cents == Decimal("10.91")
    assert "chart-data" in html and "uPlot-1.6.32.iife.min.js" in html


@pytest.mark.django_db
def test_an_invalid_range_is_refused():
    client = signed_in(make_user("fin", finance=True))
    assert client.get("/reports/", {"from": "2026-03-10", "to": "2026-03-01"}).status_code == 400
    assert client.get("/reports/export.csv", {"group": "colour"}).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_raw_ledger_csv_streams_every_row_with_its_price_version(gateway_url, monkeypatch):
    from usage import views

    monkeypatch.setattr(views, "LEDGER_PAGE_ROWS", 4)  # several pages, with tied timestamps
    key, _ = api_key_create(name="red-1", team="red")
    price = Price.objects.create(upstream_model="up-model-x", input_per_mtok=Decimal("0.15"),
                                 output_per_mtok=Decimal("0.6"), cached_input_per_mtok=Decimal("0.075"))
    today = utc_today()
    written = [ledger_write(at=at_day(today) if n % 3 else at_day(today - timedelta(days=1)), key=key,
                            cost=f"0.00000{n}", price_id=price.pk) for n in range(11)]
    ledger_write(at=at_day(today - timedelta(days=5)), key=key, cost="9")  # outside the range
    client = signed_in(make_user("fin", finance=True))
    cookies = {"sessionid": client.cookies["sessionid"].value}
    with httpx.stream("GET", f"{gateway_url}/reports/ledger.csv", cookies=cookies,
                      params={"from": today - timedelta(days=1), "to": today}) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        body = response.read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in written)
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum(Decimal(e.cost_usd) for e in written)
    assert {(r["price_id"], r["price__input_per_mtok"], r["price__output_per_mtok"],
             r["price__cached_input_per_mtok"]) for r in rows} == {
        (str(price.pk), "0.150000", "0.600000", "0.075000")}
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)


@pytest.mark.django_db
def test_budget_page_shows_limit_spent_reserved_and_remaining():
    key, _ = api_key_create(name="capped", team="ops", budget_usd=Decimal("10"), budget_period="month")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("10"), period="month")
    budget_reserve(request_id="in-flight", limits=[limit], amount_units=usd_to_units(Decimal("1.5")))
    budget_reserve(request_id="done", limits=[limit], amount_units=usd_to_units(Decimal("1")))
    usage_record_write(entry=LedgerEntry(
        request_id="done", client_request_id="", created_at=datetime.now(timezone.utc),
        api_key_id=key.id, key_prefix=key.prefix, team_id=key.team_id, surface="openai.chat",
        public_model="m", upstream_model="m", provider_name="p", route_id=None, stream=False,
        status="ok", http_status=200, error_type="", input_tokens=1, output_tokens=1,
        cached_tokens=0, reasoning_tokens=0, usage_source="reported", cost_usd=Decimal("0.25"),
        price_id=None, latency_ms=1, ttft_ms=None), settle_budget=True)
    client = signed_in(make_user("fin", finance=True))
    statuses = client.get("/reports/budgets/").context["budgets"]
    assert [(b.scope, b.limit_usd, b.spent_usd, b.reserved_usd, b.remaining_usd) for b in statuses] == [
        ("key", Decimal("10"), Decimal("0.25"), Decimal("1.5"), Decimal("8.25"))]
    assert statuses[0].period_end.day == 1
    rows = csv_rows(client.get("/reports/budgets.csv"))
    assert rows[0]["remaining_usd"] == "8.2500000000" and rows[0]["name"].startswith("capped")
