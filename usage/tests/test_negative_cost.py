"""A negative price stored before prices were validated (here written straight into the
database, past every validator) must not fail the request or shrink a budget counter: the
request is answered, its cost is logged as an error and counted as 0."""
from __future__ import annotations

import logging
from decimal import Decimal

import httpx
import pytest
from django.conf import settings

from providers.models import ApiKey, Price
from providers.services import config_version_bump
from usage.budgets import usd_to_units
from usage.models import BudgetCounter


def test_negative_amount_counts_as_zero_with_a_logged_error(caplog):
    with caplog.at_level(logging.ERROR, logger="usage.budgets"):
        assert usd_to_units(Decimal("-0.25")) == 0
    assert "negative amount -0.25 USD" in caplog.text
    assert usd_to_units(Decimal("0.25")) == 2_500_000_000


def _request_at_a_negative_price(url: str, raw: str, *, stream: bool) -> httpx.Response | None:
    Price.objects.filter(upstream_model="up-gpt").update(
        input_per_mtok=Decimal("-5"), output_per_mtok=Decimal("-5"), cached_input_per_mtok=None)
    config_version_bump()
    try:
        return httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {raw}"},
                          json={"model": "gpt-test", "stream": stream, "max_tokens": 50,
                                "messages": [{"role": "user", "content": "hi"}]})
    except httpx.TransportError:
        return None


@pytest.mark.parametrize("stream", [False, True])
def test_negative_price_never_reaches_a_budget_counter(gateway_url, fake_provider, make_key,
                                                       ledger_rows, caplog, stream):
    raw = make_key(budget_usd=Decimal("1.00"), budget_period="day")
    key = ApiKey.objects.get(name="tests")
    with caplog.at_level(logging.ERROR, logger="usage.budgets"):
        _request_at_a_negative_price(gateway_url, raw, stream=stream)
        [row] = ledger_rows(1)
    assert row.status == "ok"
    assert "negative amount" in caplog.text
    # Without Redis the reservation is a database counter, settled back to nothing; with
    # Redis it and its settlement live in Redis, and a zero charge writes no database counter.
    assert list(BudgetCounter.objects.filter(scope="key", scope_id=key.pk)
                .values_list("spent_units", "reserved_units")) == (
        [] if settings.REDIS_URL else [(0, 0)])


@pytest.mark.parametrize("stream", [False, True])
def test_negative_price_answers_200(gateway_url, fake_provider, make_key, ledger_rows, stream):
    raw = make_key(budget_usd=Decimal("1.00"), budget_period="day")
    response = _request_at_a_negative_price(gateway_url, raw, stream=stream)
    ledger_rows(1)
    assert response is not None and response.status_code == 200, response and response.text
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
