"""The admin's key and team pages publish key changes (issue 18): each save writes one row of
the key change feed naming the key's digests or the team, and never bumps the routing config
version, so no server reloads its routing snapshot."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from providers.models import ApiKey, ConfigVersion, KeyChange, Team
from providers.services import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123-tests")
    client = Client()
    client.force_login(user)
    return client


def _key_form(key: ApiKey, **changes) -> dict:
    form = {"name": key.name, "team": key.team_id or "", "allowed_models": "",
            "expires_at_0": "", "expires_at_1": "", "budget_usd": "", "budget_period": "month",
            "budget_alert_pct": "", "rpm_limit": "", "tpm_limit": "", "max_tokens_default": ""}
    form.update(changes)
    return form


def _version() -> str | None:
    return ConfigVersion.objects.values_list("token", flat=True).first()


def test_revoking_a_key_on_its_page_publishes_its_digests_only(admin_client):
    key, _ = api_key_create(name="app")
    version, before = _version(), KeyChange.objects.count()
    response = admin_client.post(f"/admin/providers/apikey/{key.pk}/change/",
                                 _key_form(key, revoked="on", rpm_limit="60"))
    assert response.status_code == 302, response.content[:2000]
    key.refresh_from_db()
    assert key.revoked and key.rpm_limit == 60
    change = KeyChange.objects.order_by("-id").first()
    assert KeyChange.objects.count() == before + 1
    assert change.digests == [key.key_hash] and change.team_id is None
    assert _version() == version


def test_a_teams_new_budget_is_published_for_its_keys(admin_client):
    api_key_create(name="app", team="research")
    team = Team.objects.get(name="research")
    version, before = _version(), KeyChange.objects.count()
    response = admin_client.post(f"/admin/providers/team/{team.pk}/change/", {
        "name": "research", "budget_usd": "25", "budget_period": "month",
        "budget_alert_pct": "", "alert_webhook_url": "", "alert_email": ""})
    assert response.status_code == 302, response.content[:2000]
    change = KeyChange.objects.order_by("-id").first()
    assert KeyChange.objects.count() == before + 1
    assert change.team_id == team.pk and change.digests == []
    assert _version() == version


def test_a_key_added_in_the_admin_publishes_its_digest(admin_client):
    version = _version()
    response = admin_client.post("/admin/providers/apikey/add/", {
        "name": "from-admin", "team": "", "allowed_models": "", "expires_at_0": "",
        "expires_at_1": "", "budget_usd": "", "budget_period": "month", "budget_alert_pct": "",
        "rpm_limit": "", "tpm_limit": "", "max_tokens_default": ""})
    assert response.status_code == 200, response.content[:2000]  # the page showing the secret
    key = ApiKey.objects.get(name="from-admin")
    assert KeyChange.objects.get().digests == [key.key_hash]
    assert _version() == version
