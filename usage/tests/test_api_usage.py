"""The finance JSON API: token and session auth, finance-only, exact totals, cursor pages."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from providers.models import PRICE_OPTIONAL_FIELDS
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from usage.models import UsageRecord
from usage.tests.test_reports import make_user, small_ledger  # noqa: F401 (fixture)


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/usage/summary", "/api/usage/records"])
def test_without_credentials_the_api_answers_401_with_a_token_challenge(path):
    response = APIClient().get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/usage/summary", "/api/usage/records"])
def test_a_token_of_staff_outside_finance_gets_403(path):
    assert token_client(make_user("ops")).get(path).status_code == 403
    assert APIClient(HTTP_AUTHORIZATION="Token not-a-token").get(path).status_code == 401


@pytest.mark.django_db
def test_summary_by_team_and_model_adds_up_to_the_ledger(small_ledger):  # noqa: F811
    today = small_ledger["today"]
    response = token_client(make_user("fin", finance=True)).get(
        "/api/usage/summary", {"from": today - timedelta(days=2), "to": today,
                               "group_by": "model,team"})
    assert response.status_code == 200
    data = response.json()
    assert data["group_by"] == ["team", "model"]
    ledger_sum = sum(UsageRecord.objects.values_list("cost_usd", flat=True), Decimal(0))
    assert Decimal(data["totals"]["cost_usd"]) == ledger_sum == sum(
        Decimal(r["cost_usd"]) for r in data["rows"])
    assert {(r["team"], r["model"]) for r in data["rows"]} == {
        ("red", "model-x"), ("red", "model-y"), ("blue", "model-y"), ("blue", "model-x"),
        ("(no team)", "model-x")}
    assert all(set(r) >= {"team_id", "requests", "input_tokens", "output_tokens"} for r in data["rows"])


@pytest.mark.django_db
def test_summary_filters_and_session_auth(small_ledger, client):  # noqa: F811
    client.force_login(make_user("fin", finance=True))
    response = client.get("/api/usage/summary", {"group_by": "day", "provider": "prov-b",
                                                 "key": small_ledger["red1"].pk})
    assert response.status_code == 200
    data = response.json()
    assert [r["cost_usd"] for r in data["rows"]] == ["1.0000000001"] * 3
    assert data["totals"]["requests"] == 3


@pytest.mark.django_db
def test_summary_rejects_unknown_groupings_and_bad_dates():
    client = token_client(make_user("fin", finance=True))
    assert client.get("/api/usage/summary", {"group_by": "colour"}).status_code == 400
    response = client.get("/api/usage/summary", {"from": "yesterday"})
    assert response.status_code == 400 and "from" in response.json()


@pytest.mark.django_db
def test_records_are_cursor_paginated_newest_first_with_price_versions(small_ledger):  # noqa: F811
    today = small_ledger["today"]
    client = token_client(make_user("fin", finance=True))
    url = f"/api/usage/records?from={today - timedelta(days=2)}&to={today}&page_size=5"
    seen = []
    while url:
        page = client.get(url).json()
        assert len(page["results"]) <= 5
        seen.extend(page["results"])
        url = page["next"]
    assert len(seen) == 18 == len({r["request_id"] for r in seen})
    assert [r["created_at"] for r in seen] == sorted((r["created_at"] for r in seen), reverse=True)
    price = small_ledger["price"]
    assert seen[0]["price"] == {"id": price.pk, "effective_from": seen[0]["price"]["effective_from"],
                                "input_per_mtok": "1.000000", "output_per_mtok": "2.000000",
                                **dict.fromkeys(PRICE_OPTIONAL_FIELDS)}
    assert {r["team_name"] for r in seen} == {"red", "blue", None}


@pytest.mark.django_db
def test_the_api_is_read_only():
    client = token_client(make_user("fin", finance=True))
    assert client.post("/api/usage/records", {}).status_code == 405
