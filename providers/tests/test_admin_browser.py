"""The admin's money validation in headless Chromium against the live server: a negative price,
a team budget of -10, an alert at 250 % and a link-local webhook are refused with field errors
and nothing saved; a bad price is superseded from its page in one step; a key with usage cannot
be deleted (revoke instead) while one without usage can. Screenshots land in test-artifacts/."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from providers.models import ApiKey, Price, Team
from providers.services import api_key_create
from usage.tests.test_reports import ledger_write, make_user

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PASSWORD = "a-long-test-password"


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


def _sign_in(page, url: str) -> None:
    make_user("root", superuser=True, password=PASSWORD)
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")


def _error(page, field: str):
    return page.locator(f".form-row.field-{field} .errorlist")


def test_negative_price_and_bad_team_settings_show_field_errors(page, gateway_url):
    _sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/price/add/")
    page.fill("#id_upstream_model", "up-x")
    page.fill("#id_input_per_mtok", "-1")
    page.fill("#id_output_per_mtok", "2")
    with page.expect_navigation():
        page.click("input[name=_save]")
    expect(_error(page, "input_per_mtok")).to_contain_text("greater than or equal to 0")
    expect(page.locator(".errornote")).to_be_visible()
    _shot(page, "negative-price")
    assert not Price.objects.exists()

    page.goto(f"{gateway_url}/admin/providers/team/add/")
    page.fill("#id_name", "red")
    page.fill("#id_budget_usd", "-10")
    page.fill("#id_budget_alert_pct", "250")
    page.fill("#id_alert_webhook_url", "http://169.254.169.254/latest/meta-data/")
    with page.expect_navigation():
        page.click("input[name=_save]")
    expect(_error(page, "budget_usd")).to_contain_text("greater than or equal to 0")
    expect(_error(page, "budget_alert_pct")).to_contain_text("less than or equal to 100")
    expect(_error(page, "alert_webhook_url")).to_contain_text("link-local")
    _shot(page, "bad-team")
    assert not Team.objects.exists()


def test_a_bad_price_is_superseded_from_its_page_in_one_step(page, gateway_url):
    bad = Price.objects.create(upstream_model="up-x", input_per_mtok=Decimal("-1"),
                               output_per_mtok=Decimal("2"),
                               effective_from=timezone.now() - timezone.timedelta(days=2))
    before = Price.objects.filter(pk=bad.pk).values().get()
    _sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/price/{bad.pk}/change/")
    form = page.locator("#supersede_form")
    expect(form.locator("#id_supersede-input_per_mtok")).to_have_value("-1.000000")

    # A negative rate is refused there too, and nothing is saved.
    with page.expect_navigation():
        form.locator("input[name=_supersede]").click()
    expect(page.locator("#supersede_form .field-input_per_mtok .errorlist")).to_contain_text(
        "greater than or equal to 0")
    assert Price.objects.count() == 1

    page.fill("#id_supersede-input_per_mtok", "1.5")
    started = timezone.now()
    with page.expect_navigation():
        page.locator("#supersede_form input[name=_supersede]").click()
    new = Price.objects.exclude(pk=bad.pk).get()
    expect(page).to_have_url(f"{gateway_url}/admin/providers/price/{new.pk}/change/")
    expect(page.locator(".messagelist .success")).to_contain_text("now supersedes")
    _shot(page, "superseded")
    assert (new.input_per_mtok, new.output_per_mtok, new.upstream_model) == \
        (Decimal("1.5"), Decimal("2"), "up-x")
    assert new.effective_from >= started
    assert Price.objects.filter(pk=bad.pk).values().get() == before


def test_a_key_with_usage_is_refused_deletion_and_one_without_deletes(page, gateway_url):
    used, _ = api_key_create(name="used-app")
    unused, _ = api_key_create(name="spare-app")
    ledger_write(at=timezone.now(), key=used)
    _sign_in(page, gateway_url)

    page.goto(f"{gateway_url}/admin/providers/apikey/{used.pk}/change/")
    with page.expect_navigation():
        page.click("a.deletelink")
    expect(page).to_have_url(f"{gateway_url}/admin/providers/apikey/{used.pk}/change/")
    message = page.locator(".messagelist .error")
    expect(message).to_contain_text("has usage")
    expect(message).to_contain_text("1 ledger row")
    expect(message).to_contain_text("Revoke it instead")
    _shot(page, "key-delete-refused")

    page.goto(f"{gateway_url}/admin/providers/apikey/")
    page.check(f"input[name=_selected_action][value='{used.pk}']")
    page.check(f"input[name=_selected_action][value='{unused.pk}']")
    page.select_option("select[name=action]", "delete_selected")
    with page.expect_navigation():
        page.click("button[name=index]")
    expect(page.locator(".messagelist .error")).to_contain_text(
        "1 of the 2 selected keys have usage")
    assert ApiKey.objects.count() == 2

    page.goto(f"{gateway_url}/admin/providers/apikey/{unused.pk}/change/")
    with page.expect_navigation():
        page.click("a.deletelink")
    with page.expect_navigation():
        page.click("input[type=submit]")
    expect(page.locator(".messagelist .success")).to_contain_text("deleted successfully")
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["used-app"]
