"""`manage.py ledger_verify`: a month of mixed traffic written through the real ledger path
(Call -> gateway.finish.call_entry -> group commit with budget spend -> rollup) verifies with 0
differences; a corrupted row, a stale rollup or a drifted counter is found."""
from __future__ import annotations

import io
import random
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from gateway.call import Call
from gateway.finish import call_entry, call_price
from gateway.types import Usage
from providers.models import ModelRoute, Price, Provider
from providers.selectors import api_key_active_get, routing_snapshot_load
from providers.services import api_key_create
from usage.budgets import BudgetLimit
from usage.models import BudgetCounter, DailyUsage, UsageRecord, UsageStatus
from usage.rollups import usage_rollup
from usage.services import LedgerWrite, usage_records_write
from usage.tests.test_reports import at_day, ledger_write
from usage.verification import ledger_verify

MONTH_START = date(2026, 3, 1)
DAYS = 30
ROWS = 3000
CHANGE = datetime(2026, 3, 16, 12, tzinfo=timezone.utc)


def _at(day: int, rng: random.Random) -> datetime:
    return datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(
        days=day, seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000))


def _configure() -> None:
    anthropic = Provider.objects.create(name="anthropic-main", kind="anthropic")
    openai = Provider.objects.create(name="openai-main", kind="openai")
    ModelRoute.objects.create(public_model="claude-sonnet", provider=anthropic,
                              upstream_model="claude-sonnet-4-5")
    ModelRoute.objects.create(public_model="gpt", provider=openai, upstream_model="o4-mini")
    ModelRoute.objects.create(public_model="gemini", provider=openai,
                              upstream_model="gemini-2.5-pro")
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    Price.objects.create(upstream_model="claude-sonnet-4-5", provider=anthropic,
                         input_per_mtok=Decimal("3"), output_per_mtok=Decimal("15"),
                         cached_input_per_mtok=Decimal("0.30"),
                         cache_write_5m_per_mtok=Decimal("3.75"),
                         cache_write_1h_per_mtok=Decimal("6"), long_context_threshold=200_000,
                         long_context_input_per_mtok=Decimal("6"),
                         long_context_output_per_mtok=Decimal("22.5"),
                         long_context_cached_input_per_mtok=Decimal("0.6"),
                         long_context_cache_write_5m_per_mtok=Decimal("7.5"),
                         long_context_cache_write_1h_per_mtok=Decimal("12"), effective_from=old)
    # A price change mid-month: rows before it keep the old version, rows after get the new.
    Price.objects.create(upstream_model="o4-mini", input_per_mtok=Decimal("1.10"),
                         output_per_mtok=Decimal("4.40"), cached_input_per_mtok=Decimal("0.275"),
                         effective_from=old)
    Price.objects.create(upstream_model="o4-mini", input_per_mtok=Decimal("0.90"),
                         output_per_mtok=Decimal("3.60"), cached_input_per_mtok=Decimal("0.225"),
                         reasoning_per_mtok=Decimal("5"), audio_input_per_mtok=Decimal("40"),
                         audio_output_per_mtok=Decimal("80"), effective_from=CHANGE)
    Price.objects.create(upstream_model="gemini-2.5-pro", provider=openai,
                         input_per_mtok=Decimal("1.25"), output_per_mtok=Decimal("10"),
                         cached_input_per_mtok=Decimal("0.125"), long_context_threshold=200_000,
                         long_context_input_per_mtok=Decimal("2.5"),
                         long_context_output_per_mtok=Decimal("15"), effective_from=old)


def _usage(model: str, rng: random.Random) -> Usage:
    if model == "claude-sonnet":
        fresh, read = rng.randrange(0, 3000), rng.choice([0, rng.randrange(0, 250_000)])
        w5, w1 = rng.randrange(0, 4000), rng.choice([0, rng.randrange(0, 2000)])
        return Usage(input_tokens=fresh + read + w5 + w1, output_tokens=rng.randrange(1, 3000),
                     cached_tokens=read, cache_creation_tokens=w5 + w1,
                     cache_creation_1h_tokens=w1, reasoning_tokens=rng.randrange(0, 500))
    prompt = rng.randrange(1, 300_000 if model == "gemini" else 20_000)
    out = rng.randrange(1, 4000)
    return Usage(input_tokens=prompt, output_tokens=out, cached_tokens=rng.randrange(0, prompt),
                 reasoning_tokens=rng.randrange(0, out),
                 audio_input_tokens=rng.choice([0, 0, 0, rng.randrange(0, 50)]),
                 audio_output_tokens=rng.choice([0, 0, 0, rng.randrange(0, 50)]))


def _month_of_traffic(rng: random.Random) -> None:
    _configure()
    keys = [api_key_create(name=f"key-{i}", team=f"team-{i % 2}")[0] for i in range(4)]
    snapshot = routing_snapshot_load()
    infos = {key.id: api_key_active_get(key_hash=key.key_hash) for key in keys}
    writes: list[LedgerWrite] = []
    for n in range(ROWS):
        key = infos[rng.choice(keys).id]
        model = rng.choice(sorted(snapshot.deployments))
        call = Call(surface=rng.choice(["openai.chat", "anthropic.messages"]),
                    client_request_id="", created_at=_at(n * DAYS // ROWS, rng))
        call.authenticated(key)
        call.described(model=model, stream=rng.random() < 0.5)
        call.attributed(tags=("batch",) if n % 3 else (), end_user=f"user-{n % 7}")
        call.routed(snapshot.deployments[model][0])
        roll = rng.random()
        if roll < 0.8:
            call.usage_reported(_usage(model, rng))
        elif roll < 0.9:
            call.prompt_estimated(rng.randrange(1, 5000))
            call.output_estimated(rng.randrange(0, 500))
            call.disconnected()
        else:
            call.prompt_estimated(rng.randrange(1, 5000))
            call.failed(status=UsageStatus.UPSTREAM_ERROR, error_type="api_error",
                        http_status=502)
        limits = tuple(BudgetLimit(scope=scope, scope_id=scope_id, limit_usd=Decimal("1000"),
                                   period="month")
                       for scope, scope_id in (("key", key.id), ("team", key.team_id)))
        entry = call_entry(call, call_price(call, snapshot), now=time.monotonic())
        writes.append(LedgerWrite(entry=entry, charge_limits=limits))
        if len(writes) == 64:
            usage_records_write(writes=writes)
            writes = []
    usage_records_write(writes=writes)
    for day in range(DAYS):
        usage_rollup(day=MONTH_START + timedelta(days=day))


@pytest.mark.django_db
def test_a_month_of_mixed_traffic_verifies_with_no_difference_and_a_corruption_is_found():
    _month_of_traffic(random.Random(17))
    end = MONTH_START + timedelta(days=DAYS - 1)
    assert UsageRecord.objects.count() == ROWS
    assert UsageRecord.objects.filter(cache_write_1h_tokens__gt=0).exists()
    assert UsageRecord.objects.values("price_id").distinct().count() == 4
    result = ledger_verify(start=MONTH_START, end=end)
    assert (result.rows_checked, result.days_checked, result.differences) == (ROWS, DAYS, 0)
    assert result.counters_checked == 6  # 4 keys and 2 teams, one month each
    assert result.days_not_rolled_up == []
    call_command("ledger_verify", "--from", str(MONTH_START), "--to", str(end))

    # A row whose cost no longer matches its tokens at its price version.
    victim = UsageRecord.objects.filter(cost_usd__gt=0).order_by("created_at")[1500]
    UsageRecord.objects.filter(pk=victim.pk).update(cost_usd=F("cost_usd") + Decimal("0.01"))
    result = ledger_verify(start=MONTH_START, end=end)
    assert [r.request_id for r in result.rows] == [victim.request_id]
    assert result.rows[0].recomputed == victim.cost_usd
    # ... and with it the day's rollup and the key's and team's counters disagree.
    assert [d.day for d in result.days] == [victim.created_at.date()]
    assert {(c.scope, c.scope_id) for c in result.counters} == {
        ("key", victim.api_key_id), ("team", victim.team_id)}
    with pytest.raises(CommandError, match="4 difference"):
        call_command("ledger_verify", "--from", str(MONTH_START), "--to", str(end))


@pytest.mark.django_db
def test_a_changed_token_count_a_stale_rollup_and_a_drifted_counter_are_each_found():
    _month_of_traffic(random.Random(5))
    end = MONTH_START + timedelta(days=DAYS - 1)
    row = UsageRecord.objects.filter(price__isnull=False, output_tokens__gt=10).first()
    UsageRecord.objects.filter(pk=row.pk).update(output_tokens=F("output_tokens") - 1)
    result = ledger_verify(start=MONTH_START, end=end)
    assert [r.request_id for r in result.rows] == [row.request_id]
    assert [d.day for d in result.days] == [row.created_at.date()]  # its token sum
    assert result.counters == []  # the stored cost, which counters hold, is unchanged

    UsageRecord.objects.filter(pk=row.pk).update(output_tokens=F("output_tokens") + 1)
    DailyUsage.objects.filter(day=MONTH_START).delete()
    counter = BudgetCounter.objects.filter(scope="team").first()
    BudgetCounter.objects.filter(pk=counter.pk).update(spent_units=F("spent_units") - 1)
    result = ledger_verify(start=MONTH_START, end=end)
    assert (result.rows, result.days) == ([], [])
    assert result.days_not_rolled_up == [MONTH_START]
    assert [(c.scope, c.scope_id) for c in result.counters] == [("team", counter.scope_id)]


@pytest.mark.django_db
def test_a_monthly_rollup_that_no_longer_adds_up_to_its_days_is_found():
    april = date(2026, 4, 1)
    for n, day in enumerate((1, 9, 30)):
        ledger_write(at=at_day(april.replace(day=day), hour=n), cost="0")  # no price: costs 0
    for n in range(30):
        usage_rollup(day=april + timedelta(days=n))
    end = date(2026, 5, 3)  # April whole, May not: one month checked
    result = ledger_verify(start=april, end=end)
    assert (result.months_checked, result.months, result.differences) == (1, [], 0)
    assert ledger_verify(start=april + timedelta(days=1), end=end).months_checked == 0

    # A day's rollup changed without its month's being recomputed.
    DailyUsage.objects.filter(day=april.replace(day=9)).update(requests=F("requests") + 2)
    result = ledger_verify(start=april, end=end)
    assert [m.month for m in result.months] == [april] and len(result.days) == 1
    assert (result.months[0].daily["requests"], result.months[0].monthly["requests"]) == (5, 3)
    out = io.StringIO()
    with pytest.raises(CommandError, match="2 difference"):
        call_command("ledger_verify", "--from", str(april), "--to", str(end), stdout=out)
    assert "month 2026-04: daily rollups != monthly rollup: requests 5 != 3" in out.getvalue()
