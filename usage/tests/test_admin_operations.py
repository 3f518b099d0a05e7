"""The admin that runs the gateway: test connection, circuit state, price versions, the
read-only ledger and the audit log (secrets never stored)."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from providers.models import ApiKey, AuditLog, ModelRoute, Price, Provider
from providers.services import api_key_create
from usage.models import UsageRecord
from usage.tests.test_reports import ledger_write, make_user

UPSTREAM_SECRET = "sk-fake-upstream-secret-a"  # conftest's fake_provider


@pytest.fixture
def admin_client(transactional_db) -> Client:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    return client


def _messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def _test_connection(client: Client, provider: Provider):
    return client.post("/admin/providers/provider/", {
        "action": "test_connection", "_selected_action": [provider.pk]}, follow=True)


def _audit_text() -> str:
    return json.dumps(list(AuditLog.objects.values("actor", "object_repr", "changes")))


def test_test_connection_sends_one_tiny_request_and_reports_success(admin_client, fake_provider):
    provider = Provider.objects.get(name="fake-a")
    response = _test_connection(admin_client, provider)
    [(level, text)] = _messages(response)
    assert level == "success" and text.startswith("fake-a: OK in ") and "gpt-test → up-gpt" in text
    [call] = fake_provider.calls("fake-a")
    assert call.path == "/p/fake-a/v1/chat/completions"
    assert call.body["max_tokens"] == 1 and call.body["model"] == "up-gpt"
    assert call.headers["Authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert not UsageRecord.objects.exists()  # a probe, not a proxied request


def test_test_connection_reports_the_upstream_failure(admin_client, fake_provider):
    fake_provider.behave("fake-a", status=500)
    [(level, text)] = _messages(_test_connection(admin_client, Provider.objects.get(name="fake-a")))
    assert level == "error" and "upstream HTTP 500" in text


def test_test_connection_speaks_the_anthropic_dialect(admin_client, fake_anthropic_provider):
    provider = Provider.objects.get(name="fake-anth")
    [(level, _)] = _messages(_test_connection(admin_client, provider))
    assert level == "success"
    [call] = fake_anthropic_provider.calls("fake-anth")
    assert call.path == "/p/fake-anth/v1/messages" and call.body["max_tokens"] == 1


def test_circuit_state_is_shown_read_only(admin_client, fake_provider):
    provider = Provider.objects.get(name="fake-a")
    html = admin_client.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode()
    assert "Circuit state" in html
    if settings.REDIS_URL:
        assert "gpt-test → up-gpt" in html and "<td>closed</td>" in html
    else:
        assert "per-process state: not visible from the admin" in html


def test_provider_edits_through_the_admin_are_audited_without_the_secret(admin_client, fake_provider):
    provider = Provider.objects.get(name="fake-a")
    route = ModelRoute.objects.get(provider=provider)
    assert "api_key" in AuditLog.objects.get(object_type="provider", action="add").changes
    form = {
        "name": "fake-a", "kind": "openai", "base_url": provider.base_url,
        "api_key": "sk-rotated-provider-secret", "weight": 3, "priority": 0, "enabled": "on",
        "timeout_s": 600, "max_inflight": 512, "breaker_failures": 5, "breaker_cooldown_s": 30,
        "extra_headers": '{"X-Org": "org-secret-value"}',
        "routes-TOTAL_FORMS": 1, "routes-INITIAL_FORMS": 1, "routes-MIN_NUM_FORMS": 0,
        "routes-MAX_NUM_FORMS": 1000, "routes-0-id": route.pk, "routes-0-provider": provider.pk,
        "routes-0-public_model": "gpt-test", "routes-0-upstream_model": "up-gpt",
        "routes-0-weight": 7, "routes-0-priority": "", "routes-0-enabled": "on",
    }
    response = admin_client.post(f"/admin/providers/provider/{provider.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    change = AuditLog.objects.get(object_type="provider", action="change")
    assert change.actor == "root" and change.user.username == "root"
    assert change.changes["api_key"] == "changed"
    assert change.changes["weight"] == [1, 3]
    assert change.changes["extra_headers"] == [{}, {"X-Org": "•••"}]
    route_change = AuditLog.objects.get(object_type="route", action="change")
    assert route_change.changes == {"weight": [None, 7]}
    text = _audit_text()
    for secret in (UPSTREAM_SECRET, "sk-rotated-provider-secret", "org-secret-value"):
        assert secret not in text
    assert provider.api_key_encrypted not in text


def test_keys_created_and_revoked_are_audited_without_the_key(admin_client):
    response = admin_client.post("/admin/providers/apikey/add/", {
        "name": "billing", "allowed_models": "", "budget_period": "month"})
    # The secret is on the page answering the POST, never in a message (a cookie).
    assert b"Shown once" in response.content and not _messages(response)
    [raw] = re.findall(r'value="(gw-[^"]+)"', response.content.decode())
    key = ApiKey.objects.get(name="billing")
    admin_client.post("/admin/providers/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    add = AuditLog.objects.get(object_type="api_key", action="add")
    revoke = AuditLog.objects.get(object_type="api_key", action="change")
    assert add.actor == "root" and "key_hash" not in add.changes
    assert revoke.changes == {"revoked": [False, True]} and revoke.actor == "root"
    text = _audit_text()
    assert raw not in text and key.key_hash not in text


def test_cli_key_creation_is_audited_under_the_command(transactional_db):
    key, raw = api_key_create(name="cli-key", team="ops")
    logged = {(a.object_type, a.action, a.actor) for a in AuditLog.objects.all()}
    assert logged == {("team", "add", "create_api_key"), ("api_key", "add", "create_api_key")}
    assert raw not in _audit_text()


def test_prices_are_add_only_with_the_version_in_force_marked(admin_client):
    old = Price.objects.create(upstream_model="up-x", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"),
                               effective_from=timezone.now() - timedelta(days=2))
    new = Price.objects.create(upstream_model="up-x", input_per_mtok=Decimal("3"), output_per_mtok=Decimal("4"),
                               effective_from=timezone.now() - timedelta(days=1))
    future = Price.objects.create(upstream_model="up-x", input_per_mtok=Decimal("5"),
                                  output_per_mtok=Decimal("6"),
                                  effective_from=timezone.now() + timedelta(days=1))
    listing = admin_client.get("/admin/providers/price/")
    in_force = {row.pk: listing.context["cl"].model_admin.in_force(row)
                for row in listing.context["cl"].result_list}
    assert in_force == {old.pk: False, new.pk: True, future.pk: False}
    view = admin_client.get(f"/admin/providers/price/{new.pk}/change/").content.decode()
    assert 'name="_save"' not in view and "Add a new version based on this one" in view
    assert "/admin/providers/price/add/?upstream_model=up-x&amp;input_per_mtok=3" in view
    refused = admin_client.post(f"/admin/providers/price/{new.pk}/change/", {"upstream_model": "up-y"})
    assert refused.status_code == 403
    assert admin_client.post(f"/admin/providers/price/{new.pk}/delete/").status_code == 403
    admin_client.post("/admin/providers/price/add/", {
        "upstream_model": "up-x", "input_per_mtok": "7", "output_per_mtok": "8",
        "effective_from_0": timezone.now().strftime("%Y-%m-%d"),
        "effective_from_1": timezone.now().strftime("%H:%M:%S")})
    assert AuditLog.objects.filter(object_type="price", action="add").count() == 1


def test_the_ledger_is_read_only_in_the_admin(admin_client):
    ledger_write(at=timezone.now())
    row = UsageRecord.objects.get()
    assert admin_client.get("/admin/usage/usagerecord/").status_code == 200
    assert admin_client.get("/admin/usage/usagerecord/add/").status_code == 403
    assert admin_client.post(f"/admin/usage/usagerecord/{row.pk}/delete/").status_code == 403
    assert admin_client.post(f"/admin/usage/usagerecord/{row.pk}/change/", {}).status_code == 403
    assert UsageRecord.objects.count() == 1


def test_the_audit_log_is_read_only(admin_client, fake_provider):
    entry = AuditLog.objects.first()
    assert admin_client.get("/admin/providers/auditlog/").status_code == 200
    assert admin_client.post(f"/admin/providers/auditlog/{entry.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/providers/auditlog/add/").status_code == 403


def test_key_list_shows_when_each_key_was_last_used(admin_client):
    used, _ = api_key_create(name="used")
    api_key_create(name="idle")
    last = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    ledger_write(at=last - timedelta(days=1), key=used)
    ledger_write(at=last, key=used)
    listing = admin_client.get("/admin/providers/apikey/")
    seen = {k.name: k.last_used_at for k in listing.context["cl"].result_list}
    assert seen == {"idle": None, "used": last}
    assert "never" in listing.content.decode()
