"""Money and alert settings are checked wherever they are entered: the models (so the admin and
every ModelForm), the routing file and create_api_key; the database refuses a negative budget or
an alert outside 1..100 % even past the validators. Keys and teams with usage are never deleted
from the admin, and a bad price is superseded from its own page in one step."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, models, transaction
from django.test import Client
from django.utils import timezone

from providers.config_file import ConfigError, config_parse
from providers.models import ApiKey, AuditLog, Price, Team
from providers.services import api_key_create
from providers.validation import base_url_problem, webhook_url_problem
from usage.tests.test_reports import ledger_write, make_user

RATES = [f.name for f in Price._meta.concrete_fields if isinstance(f, models.DecimalField)]


@pytest.fixture
def admin_client(transactional_db) -> Client:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    return client


def _messages(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/budget?token=abc", None),
    ("http://10.0.0.5:8080/hook", None),
    ("ftp://hooks.example.com/x", "must be an http(s) URL with a host"),
    ("https:///no-host", "must be an http(s) URL with a host"),
    ("https://user:secret@hooks.example.com/x", "must not contain credentials"),
    ("http://169.254.169.254/latest/meta-data/", "points at a link-local (metadata) address"),
    ("http://[fe80::1]/hook", "points at a link-local (metadata) address"),
    ("http://[::ffff:169.254.169.254]/", "points at a link-local (metadata) address"),
    ("http://metadata.google.internal./computeMetadata/v1/", "points at a cloud metadata service"),
    ("http://hooks.example.com:99999/", "is not a valid URL"),
])
def test_webhook_urls_are_checked_like_provider_urls(url, problem, settings):
    found = webhook_url_problem(url)
    assert (found is None) if problem is None else (problem in found), found
    settings.GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS = True
    # The upstream opt-in lifts the link-local rule for providers, never for webhooks.
    assert webhook_url_problem(url) == found
    if found and "link-local" not in found and "metadata" not in found:
        assert base_url_problem(url) is not None


def test_provider_url_rule_is_unchanged():
    assert base_url_problem("https://api.openai.com/v1") is None
    assert base_url_problem("http://169.254.169.254/") == "points at a link-local (metadata) address"
    assert "use api_key / extra_headers" in base_url_problem("https://u:p@api.example.com/")


@pytest.mark.parametrize("rate", RATES)
def test_every_price_rate_refuses_a_negative_value(rate, db):
    price = Price(upstream_model="up-x", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
    setattr(price, rate, Decimal("-0.01"))
    with pytest.raises(ValidationError) as caught:
        price.full_clean()
    assert set(caught.value.message_dict) == {rate}
    setattr(price, rate, Decimal("0"))
    price.full_clean()


@pytest.mark.parametrize(("fields", "bad"), [
    ({"budget_usd": Decimal("-10")}, "budget_usd"),
    ({"budget_alert_pct": 250}, "budget_alert_pct"),
    ({"budget_alert_pct": 0}, "budget_alert_pct"),
    ({"alert_webhook_url": "http://169.254.169.254/latest/"}, "alert_webhook_url"),
    ({"alert_webhook_url": "https://a:b@hooks.example.com/"}, "alert_webhook_url"),
])
def test_team_money_and_alert_fields_are_validated(fields, bad, db):
    with pytest.raises(ValidationError) as caught:
        Team(name="red", **fields).full_clean()
    assert bad in caught.value.message_dict
    Team(name="red", budget_usd=Decimal("0"), budget_alert_pct=100,
         alert_webhook_url="https://hooks.example.com/x").full_clean()


@pytest.mark.parametrize(("fields", "bad"), [
    ({"budget_usd": Decimal("-1")}, "budget_usd"),
    ({"budget_alert_pct": 101}, "budget_alert_pct"),
])
def test_key_money_and_alert_fields_are_validated(fields, bad, db):
    with pytest.raises(ValidationError) as caught:
        ApiKey(name="k", prefix="gw-x", key_hash="h" * 64, **fields).full_clean()
    assert bad in caught.value.message_dict


@pytest.mark.parametrize(("model", "fields"), [
    (Team, {"name": "red", "budget_usd": Decimal("-10")}),
    (Team, {"name": "red", "budget_alert_pct": 250}),
    (ApiKey, {"name": "k", "prefix": "p", "key_hash": "h", "budget_usd": Decimal("-1")}),
    (ApiKey, {"name": "k", "prefix": "p", "key_hash": "h", "budget_alert_pct": 0}),
])
def test_the_database_refuses_what_the_validators_refuse(model, fields, db):
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.create(**fields)


@pytest.mark.parametrize(("entry", "field", "line"),
                         [(0, "input", 4), (1, "output", 7), (1, "cached_input", 7)])
def test_routing_file_names_the_line_of_a_negative_price(entry, field, line):
    entries = [{"model": "ok", "input": "1", "output": "2"},
               {"model": "bad", "input": "1", "output": "2", "cached_input": "0.5"}]
    entries[entry][field] = "-" + entries[entry][field]
    text = "providers: []\nprices:\n  # the first entry is fine\n" + "".join(
        f"  - model: {e['model']}\n" + "".join(f"    {k}: '{v}'\n" for k, v in e.items()
                                               if k != "model") for e in entries)
    with pytest.raises(ConfigError) as caught:
        config_parse(text)
    assert str(caught.value) == \
        f"line {line}: prices[{entry}].{field}: must be a non-negative decimal number"


@pytest.mark.parametrize("value", ["-1", "-0.000001", "NaN", "abc"])
def test_create_api_key_refuses_a_bad_budget(value, db):
    with pytest.raises(CommandError, match="--budget-usd"):
        call_command("create_api_key", "k", f"--budget-usd={value}")
    assert not ApiKey.objects.exists()
    for flag in ("--rpm=-1", "--tpm=0", "--max-tokens-default=-5"):
        with pytest.raises(CommandError, match="must be a positive integer"):
            call_command("create_api_key", "k", flag)
    assert not ApiKey.objects.exists()


def test_admin_refuses_a_negative_price_and_saves_nothing(admin_client):
    response = admin_client.post("/admin/providers/price/add/", {
        "upstream_model": "up-x", "input_per_mtok": "-1", "output_per_mtok": "2",
        "effective_from_0": "2026-01-01", "effective_from_1": "00:00:00"})
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 0" in response.content.decode()
    assert not Price.objects.exists() and not AuditLog.objects.exists()


def test_admin_refuses_a_bad_team_budget_alert_and_webhook(admin_client):
    response = admin_client.post("/admin/providers/team/add/", {
        "name": "red", "budget_usd": "-10", "budget_period": "month", "budget_alert_pct": "250",
        "alert_webhook_url": "http://169.254.169.254/latest/meta-data/", "alert_email": ""})
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"budget_usd", "budget_alert_pct", "alert_webhook_url"}
    assert "link-local" in errors["alert_webhook_url"][0]
    assert not Team.objects.exists()


def test_a_price_is_superseded_from_its_page_in_one_step(admin_client):
    bad = Price.objects.create(upstream_model="up-x", input_per_mtok=Decimal("-1"),
                               output_per_mtok=Decimal("2"),
                               effective_from=timezone.now() - timezone.timedelta(days=3))
    before = Price.objects.filter(pk=bad.pk).values().get()
    page = admin_client.get(f"/admin/providers/price/{bad.pk}/change/").content.decode()
    assert f'action="/admin/providers/price/{bad.pk}/supersede/"' in page
    assert 'name="supersede-input_per_mtok" value="-1.000000"' in page

    refused = admin_client.post(f"/admin/providers/price/{bad.pk}/supersede/", {
        "supersede-input_per_mtok": "-1", "supersede-output_per_mtok": "2"})
    assert refused.status_code == 200
    assert refused.context["supersede_form"].errors.keys() == {"input_per_mtok"}
    assert Price.objects.count() == 1

    started = timezone.now()
    done = admin_client.post(f"/admin/providers/price/{bad.pk}/supersede/", {
        "supersede-input_per_mtok": "1.5", "supersede-output_per_mtok": "2"}, follow=True)
    new = Price.objects.exclude(pk=bad.pk).get()
    assert done.redirect_chain[-1][0] == f"/admin/providers/price/{new.pk}/change/"
    assert (new.upstream_model, new.provider_id, new.input_per_mtok, new.output_per_mtok) == \
        ("up-x", None, Decimal("1.5"), Decimal("2"))
    assert started <= new.effective_from <= timezone.now()
    assert Price.objects.filter(pk=bad.pk).values().get() == before
    assert any("now supersedes" in m and "unchanged" in m for m in _messages(done))
    assert AuditLog.objects.filter(object_type="price", action="add", object_id=str(new.pk)).exists()


def test_a_key_with_usage_is_not_deleted_and_one_without_is(admin_client):
    used, _ = api_key_create(name="used", team="red")
    unused, _ = api_key_create(name="unused")
    ledger_write(at=timezone.now(), key=used)
    ledger_write(at=timezone.now(), key=used)

    single = admin_client.post(f"/admin/providers/apikey/{used.pk}/delete/", {"post": "yes"},
                               follow=True)
    [text] = _messages(single)
    assert text.startswith("Key “used (") and "has usage" in text and "2 ledger rows" in text and "Revoke it instead" in text
    bulk = admin_client.post("/admin/providers/apikey/", {
        "action": "delete_selected", "_selected_action": [used.pk, unused.pk], "post": "yes"},
        follow=True)
    [text] = _messages(bulk)
    assert "1 of the 2 selected keys have usage" in text and "Nothing was deleted" in text
    assert ApiKey.objects.count() == 2

    deleted = admin_client.post(f"/admin/providers/apikey/{unused.pk}/delete/", {"post": "yes"},
                                follow=True)
    assert [m for m in _messages(deleted) if "deleted successfully" in m]
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["used"]

    team = Team.objects.get(name="red")
    used.team = None
    used.save()
    refused = admin_client.post("/admin/providers/team/", {
        "action": "delete_selected", "_selected_action": [team.pk], "post": "yes"}, follow=True)
    [text] = _messages(refused)
    assert "Team “red” (2 ledger rows) has usage" in text and "Revoke its keys" in text
    assert Team.objects.filter(pk=team.pk).exists()


def test_migration_repairs_stored_nonsense_before_adding_the_checks(transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = ("providers", "0005_price_rates_per_token_class"), \
        ("providers", "0006_budget_and_alert_checks")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        apps = executor.loader.project_state([before]).apps
        old_team, old_key = apps.get_model("providers", "Team"), apps.get_model("providers", "ApiKey")
        red = old_team.objects.create(name="red", budget_usd=Decimal("-10"), budget_alert_pct=250)
        fine = old_team.objects.create(name="fine", budget_usd=Decimal("5"), budget_alert_pct=80)
        key = old_key.objects.create(name="k", prefix="p", key_hash="h", budget_alert_pct=0,
                                     budget_usd=Decimal("-1"))
        executor = MigrationExecutor(connection)
        executor.migrate([after])
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert Team.objects.filter(pk=red.pk).values_list("budget_usd", "budget_alert_pct").get() == \
        (Decimal("0"), None)
    assert Team.objects.filter(pk=fine.pk).values_list("budget_usd", "budget_alert_pct").get() == \
        (Decimal("5"), 80)
    assert ApiKey.objects.filter(pk=key.pk).values_list("budget_usd", "budget_alert_pct").get() == \
        (Decimal("0"), None)
    logged = {(a.object_type, a.object_id): a.changes
              for a in AuditLog.objects.filter(actor="migration providers.0006")}
    assert logged == {
        ("team", str(red.pk)): {"budget_usd": ["-10.000000", "0"], "budget_alert_pct": [250, None]},
        ("api_key", str(key.pk)): {"budget_usd": ["-1.000000", "0"], "budget_alert_pct": [0, None]}}


def test_a_stored_link_local_webhook_is_never_posted(db, monkeypatch, caplog):
    import httpx

    from usage.alerts import budget_alerts_send
    from usage.models import BudgetCounter

    posted = []
    monkeypatch.setattr(httpx, "post", lambda *a, **k: posted.append(a))
    key, _ = api_key_create(name="k", team="research")
    # Stored before webhook URLs were checked: update() skips every validator.
    Team.objects.filter(name="research").update(
        budget_usd=Decimal("1"), budget_alert_pct=50,
        alert_webhook_url="http://169.254.169.254/latest/meta-data/")
    team = Team.objects.get(name="research")
    BudgetCounter.objects.create(scope="team", scope_id=team.pk, period="month",
                                 period_start=timezone.now().replace(day=1), spent_units=10**10)
    with caplog.at_level("ERROR", logger="usage.alerts"):
        assert budget_alerts_send() == 0
    assert posted == []
    assert "not sent: the URL points at a link-local (metadata) address" in caplog.text
