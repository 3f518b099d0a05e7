"""Client API keys: created by command, stored hashed, shown once."""
from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

from providers.keys import api_key_hash
from providers.models import ApiKey


@pytest.mark.django_db
def test_create_api_key_prints_the_secret_once_on_its_last_line():
    out = io.StringIO()
    call_command("create_api_key", "billing-app", "--team", "finance", "--models", "demo,gpt-4o",
                 "--budget-usd", "12.50", "--budget-period", "week", "--rpm", "60", "--tpm", "1000",
                 "--max-tokens-default", "256", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("gw-") and len(raw) > 30
    key = ApiKey.objects.get()
    assert key.key_hash == api_key_hash(raw) and raw not in key.key_hash
    assert key.prefix == raw[:10] and raw not in out.getvalue().splitlines()[0]
    assert key.team.name == "finance" and key.allowed_models == ["demo", "gpt-4o"]
    assert (key.budget_usd, key.budget_period, key.rpm_limit, key.tpm_limit, key.max_tokens_default) == (
        Decimal("12.50"), "week", 60, 1000, 256)


def test_hash_is_keyed_and_deterministic(settings):
    first = api_key_hash("gw-abc")
    assert first == api_key_hash("gw-abc") and len(first) == 64
    assert first != api_key_hash("gw-abd")
    settings.SECRET_KEY = "another-server-secret"
    assert api_key_hash("gw-abc") != first


def test_revoked_key_is_rejected(gateway_url, demo_key):
    import httpx

    from providers.services import api_key_revoke

    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {demo_key}"}
    assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    api_key_revoke(key=ApiKey.objects.get(name="demo"))
    assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers).status_code == 401


@pytest.mark.parametrize("bad", ["' OR 1=1 --", "gw-\"; DROP TABLE providers_apikey; --", "gw-%00 x", "ü" * 50])
def test_sql_metacharacters_in_keys_are_just_401(gateway_url, demo_key, bad):
    import httpx

    response = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"x-api-key": bad.encode("utf-8")},
                          json={"model": "demo", "messages": []})
    assert response.status_code == 401
    assert ApiKey.objects.count() == 1
