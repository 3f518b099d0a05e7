"""Hostile clients: no request field moves a provider key, keys cannot be guessed or cross-read."""
from __future__ import annotations

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from providers.config_file import ConfigError, config_parse
from providers.models import Provider
from providers.services import config_apply
from usage.models import UsageRecord


def _chat(url: str, key: str, body: dict | None = None, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=20,
                      headers={"authorization": f"Bearer {key}", **headers},
                      json=body or {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})


def test_no_request_field_or_header_changes_where_the_provider_key_goes(gateway_url, fake_provider, api_key):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
            "base_url": "http://127.0.0.1:9/steal", "api_base": "http://127.0.0.1:9/steal",
            "extra_headers": {"x-evil": "1"}}
    response = _chat(gateway_url, api_key, body, **{"x-forwarded-host": "evil.example.com",
                                                   "x-api-base": "http://127.0.0.1:9"})
    assert response.status_code == 200
    [call] = fake_provider.calls()
    assert call.provider == "fake-a" and call.path == "/p/fake-a/v1/chat/completions"
    assert call.headers["Authorization"] == "Bearer sk-fake-upstream-secret-a"  # never the client's
    assert api_key not in str(call.headers) and "x-evil" not in {k.lower() for k in call.headers}


def test_upstream_redirects_are_never_followed(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", status=307, location=fake_provider.base_url("evil") + "/chat/completions")
    response = _chat(gateway_url, api_key)
    assert response.status_code == 502
    assert fake_provider.calls("evil") == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "http://metadata.google.internal/v1",
                                 "http://[fe80::1]/v1", "http://user:pw@api.example.com/v1"])
def test_metadata_and_link_local_base_urls_are_refused(url, db):
    with pytest.raises(ConfigError, match="base_url"):
        config_parse(f"providers:\n  - name: x\n    kind: openai\n    base_url: {url}\n")


def test_admin_refuses_a_metadata_base_url(db, settings):
    User = get_user_model()
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests-123")
    client = Client()
    client.force_login(User.objects.get(username="root"))
    response = client.post("/admin/providers/provider/add/", {
        "name": "sneaky", "kind": "openai", "base_url": "http://169.254.169.254/v1", "weight": "1",
        "priority": "0", "timeout_s": "600", "max_inflight": "512", "breaker_failures": "5",
        "breaker_cooldown_s": "30", "extra_headers": "{}", "translation": "{}", "routes-TOTAL_FORMS": "0",
        "routes-INITIAL_FORMS": "0", "routes-MIN_NUM_FORMS": "0", "routes-MAX_NUM_FORMS": "1000"})
    assert response.status_code == 200 and b"link-local" in response.content
    assert not Provider.objects.filter(name="sneaky").exists()
    settings.GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS = True
    assert config_parse("providers:\n  - name: x\n    kind: openai\n    base_url: http://169.254.169.254/v1\n")


def test_key_guessing_is_locked_out_per_address(gateway_url, demo_key):
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    codes = [httpx.post(f"{gateway_url}/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer gw-guess-{i:04d}"}).status_code for i in range(40)]
    # 30 failures a minute are allowed (refilling one per 2 s); the next ones lock the address.
    first_refusal = codes.index(429)
    assert 30 <= first_refusal <= 33 and set(codes[first_refusal:]) == {429}
    assert set(codes[:first_refusal]) == {401}
    locked = httpx.post(f"{gateway_url}/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer {demo_key}"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert httpx.get(f"{gateway_url}/health").status_code == 200  # only the API is refused


def test_a_key_sees_only_its_own_models_and_idempotency(gateway_url, demo_key, make_key, fake_provider):
    limited = make_key(name="limited", models=["demo"])
    listed = httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {limited}"}).json()
    assert [m["id"] for m in listed["data"]] == ["demo"]
    other = make_key(name="other")
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    first = _chat(gateway_url, other, body, **{"idempotency-key": "shared-name"})
    second = _chat(gateway_url, demo_key, body, **{"idempotency-key": "shared-name"})
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in second.headers  # another key's entry is not replayed
    assert len(fake_provider.calls()) == 2
    assert UsageRecord.objects.count() == 2


def test_secrets_never_appear_in_exports_admin_or_error_bodies(gateway_url, fake_provider, api_key, capsys):
    import io

    User = get_user_model()
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests-123")
    admin = Client()
    admin.force_login(User.objects.get(username="root"))
    provider = Provider.objects.get(name="fake-a")
    pages = [admin.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode(),
             admin.get("/admin/providers/provider/").content.decode(),
             admin.get("/admin/providers/apikey/").content.decode()]
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    fake_provider.behave("fake-a", status=400, error_message="bad key sk-fake-upstream-secret-a given")
    bodies = [_chat(gateway_url, api_key).text, _chat(gateway_url, api_key + "x").text]
    for text in pages + [out.getvalue()] + bodies:
        assert "sk-fake-upstream-secret-a" not in text
        assert api_key not in text
