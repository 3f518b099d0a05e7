"""Daily rollups, counter reconciliation and expired reservations."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from providers.services import api_key_create
from usage.budgets import BudgetLimit, budget_reserve, reservations_expire, usd_to_units
from usage.models import BudgetCounter, BudgetReservation, DailyUsage, UsageRecord
from usage.rollups import budget_counters_reconcile, usage_rollup
from usage.services import LedgerEntry, usage_record_write

DAY = date(2026, 3, 14)


def _entry(n: int, *, key, model: str, provider: str, cost: str, status: str = "ok",
           at: datetime | None = None) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"req-{n}", client_request_id="", created_at=at or datetime(2026, 3, 14, 10, tzinfo=timezone.utc),
        api_key_id=key.id, key_prefix=key.prefix, team_id=key.team_id, surface="openai.chat",
        public_model=model, upstream_model=model, provider_name=provider, route_id=None, stream=False,
        status=status, http_status=200, error_type="", input_tokens=10 * n, output_tokens=n,
        cached_tokens=0, reasoning_tokens=0, usage_source="reported", cost_usd=Decimal(cost),
        price_id=None, latency_ms=5, ttft_ms=None)


@pytest.mark.django_db
def test_rollup_of_a_known_ledger_gives_known_aggregates_and_is_idempotent():
    key, _ = api_key_create(name="k", team="t")
    usage_record_write(entry=_entry(1, key=key, model="a", provider="p", cost="0.1000000001"))
    usage_record_write(entry=_entry(2, key=key, model="a", provider="p", cost="0.2000000002"))
    usage_record_write(entry=_entry(3, key=key, model="b", provider="p", cost="1.5", status="upstream_error"))
    usage_record_write(entry=_entry(4, key=key, model="a", provider="p", cost="9",
                                    at=datetime(2026, 3, 15, 0, 0, tzinfo=timezone.utc)))
    assert usage_rollup(day=DAY) == 2
    first = {(r.public_model, r.requests, r.errors, r.input_tokens, r.output_tokens, r.cost_usd)
             for r in DailyUsage.objects.filter(day=DAY)}
    assert first == {("a", 2, 0, 30, 3, Decimal("0.3000000003")), ("b", 1, 1, 30, 3, Decimal("1.5"))}
    assert usage_rollup(day=DAY) == 2
    again = {(r.public_model, r.requests, r.errors, r.input_tokens, r.output_tokens, r.cost_usd)
             for r in DailyUsage.objects.filter(day=DAY)}
    assert again == first and DailyUsage.objects.filter(day=DAY).count() == 2


@pytest.mark.django_db
def test_reconcile_corrects_drift_from_the_ledger_and_is_idempotent():
    key, _ = api_key_create(name="k", budget_usd=Decimal("10"), budget_period="total")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("10"), period="total")
    budget_reserve(request_id="req-1", limits=[limit], amount_units=usd_to_units(Decimal("1")))
    usage_record_write(entry=_entry(1, key=key, model="a", provider="p", cost="0.25"), settle_budget=True)
    counter = BudgetCounter.objects.get()
    assert counter.spent_units == usd_to_units(Decimal("0.25")) and counter.reserved_units == 0
    BudgetCounter.objects.update(spent_units=123)
    assert budget_counters_reconcile() == 1
    assert BudgetCounter.objects.get().spent_units == usd_to_units(Decimal("0.25"))
    assert budget_counters_reconcile() == 0


@pytest.mark.django_db
def test_unsettled_reservations_expire_and_free_the_budget():
    key, _ = api_key_create(name="k", budget_usd=Decimal("1"), budget_period="day")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("1"), period="day")
    now = datetime.now(timezone.utc)
    budget_reserve(request_id="crashed", limits=[limit], amount_units=usd_to_units(Decimal("1")), now=now)
    with pytest.raises(Exception, match="budget"):
        budget_reserve(request_id="next", limits=[limit], amount_units=1, now=now)
    assert reservations_expire(now=now + timedelta(hours=1)) == 1
    assert reservations_expire(now=now + timedelta(hours=1)) == 0
    assert BudgetCounter.objects.get().reserved_units == 0
    budget_reserve(request_id="next", limits=[limit], amount_units=1, now=now)
    # A late settlement of the expired reservation still counts its spend, once.
    usage_record_write(entry=_entry_with_id("crashed", key), settle_budget=True)
    counter = BudgetCounter.objects.get()
    assert counter.spent_units == usd_to_units(Decimal("0.5"))
    assert counter.reserved_units == 1
    assert not BudgetReservation.objects.filter(request_id="crashed").exists()


def _entry_with_id(request_id: str, key) -> LedgerEntry:
    return replace(_entry(9, key=key, model="a", provider="p", cost="0.5",
                          at=datetime.now(timezone.utc)), request_id=request_id)
