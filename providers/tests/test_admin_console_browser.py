"""The admin console in headless Chromium against the live gateway: a key created with the
keyboard only, its allowed models picked from the served ones and its secret copied; rotation
with a grace period and expiry, checked through the API; the route list's served column and
traffic shares; one error for a bad base URL; the ledger's filters and total fitting 1366 px.
Screenshots land in var/screenshots/."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from providers.models import ApiKey, ModelRoute, Price, Provider, Team
from providers.services import api_key_create, config_version_bump
from usage.tests.test_reports import ledger_write, make_user

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
PASSWORD = "a-long-test-password"
WIDE = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"admin-{name}.png"), full_page=True)


@pytest.fixture
def wide(browser):
    """A 1366 px page allowed to use the clipboard (the copy button)."""
    context = browser.new_context(viewport=WIDE, permissions=["clipboard-read", "clipboard-write"])
    yield context.new_page()
    context.close()


def sign_in(page, url: str, username: str = "root", **kwargs) -> None:
    kwargs.setdefault("superuser", True)
    make_user(username, password=PASSWORD, **kwargs)
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")


def served_models(*names: str) -> Provider:
    """A mock provider serving each public model in `names`, priced (budgeted keys need it)."""
    provider = Provider.objects.create(name="mock-a", kind="mock")
    Price.objects.create(upstream_model="mock-echo", input_per_mtok=Decimal("0.15"),
                         output_per_mtok=Decimal("0.60"))
    for name in names:
        ModelRoute.objects.create(public_model=name, provider=provider, upstream_model="mock-echo")
    config_version_bump()
    return provider


def chat(url: str, secret: str, model: str = "gpt-4o-mini") -> int:
    return httpx.post(f"{url}/v1/chat/completions", timeout=20,
                      headers={"authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
                      ).status_code


def tab_to(page, selector: str, limit: int = 150) -> None:
    """Press Tab until `selector` has the focus."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never got the focus")


def no_horizontal_overflow(page) -> None:
    """Neither the page nor a list's table (which scrolls inside `.results`) is cut off."""
    for what in ("document.documentElement", "document.querySelector('.results')"):
        widths = page.evaluate(
            f"() => {{ const e = {what}; return e && [e.scrollWidth, e.clientWidth]; }}")
        if widths:
            assert widths[0] <= widths[1], f"{what}: {widths[0]} px wide in {widths[1]} px"


def test_a_key_is_created_with_the_keyboard_only_and_its_secret_copied(wide, gateway_url):
    served_models("gpt-4o-mini", "gpt-4o", "claude-x")
    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/apikey/add/")
    expect(page.locator("label[for=id_allowed_models]")).to_have_text("Allowed models:")
    expect(page.locator(".field-allowed_models .help")).to_contain_text("gpt-4o-mini")

    # An unknown model is refused with one error naming it; nothing is saved.
    tab_to(page, "#id_name")
    page.keyboard.type("billing")
    tab_to(page, "#id_allowed_models")
    page.keyboard.type("gpt-4o-mini, nope-model")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    errors = page.locator(".field-allowed_models .errorlist li")
    expect(errors).to_have_count(1)
    expect(errors).to_contain_text("No route serves nope-model")
    shot(page, "key-unknown-model")
    assert not ApiKey.objects.exists()

    page.locator("#id_allowed_models").focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("gpt-4o-mini, gpt-4o")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator(".secret-warning")).to_contain_text("Shown once")
    secret = page.locator(".secret-value").input_value()
    key = ApiKey.objects.get()
    assert key.allowed_models == ["gpt-4o", "gpt-4o-mini"] and secret.startswith(key.prefix)

    tab_to(page, "button.copy-secret")
    page.keyboard.press("Enter")
    expect(page.locator("button.copy-secret")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "key-created")

    assert chat(gateway_url, secret, "gpt-4o") == 200
    assert chat(gateway_url, secret, "claude-x") == 403

    page.set_viewport_size(PHONE)
    shot(page, "key-created-390")
    no_horizontal_overflow(page)


def test_a_rotated_key_accepts_its_old_secret_until_the_grace_ends(wide, gateway_url):
    served_models("gpt-4o-mini")
    key, old = api_key_create(name="rotating")
    assert chat(gateway_url, old) == 200
    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/apikey/")
    page.check(f"input[name=_selected_action][value='{key.pk}']")
    page.select_option("select[name=action]", "rotate")
    with page.expect_navigation():
        page.click("button[name=index]")
    expect(page.locator("#id_grace_hours")).to_have_value("24")
    page.fill("#id_grace_hours", "0.001")  # 3.6 s
    with page.expect_navigation():
        page.click("input[name=rotate_confirm]")
    rotated_at = time.monotonic()
    expect(page.locator(".secret-note")).to_contain_text("keep working until")
    new = page.locator(".secret-value").input_value()
    shot(page, "key-rotated")
    assert new != old

    assert chat(gateway_url, new) == 200
    assert chat(gateway_url, old) == 200  # within the grace period
    time.sleep(max(0.0, 3.6 - (time.monotonic() - rotated_at)) + 0.5)
    assert chat(gateway_url, old) == 401
    assert chat(gateway_url, new) == 200
    key.refresh_from_db()
    assert key.usage_records.count() == 4  # every request, whichever secret, on the same key


def test_an_expired_key_is_refused_and_shown_expired(wide, gateway_url):
    served_models("gpt-4o-mini")
    _, active = api_key_create(name="active-app")
    key, expiring = api_key_create(name="expiring-app",
                                   expires_at=timezone.now() + timedelta(seconds=2))
    ApiKey.objects.filter(name="active-app").update(budget_usd=Decimal("10"))
    assert chat(gateway_url, expiring) == 200
    time.sleep(2.2)
    assert chat(gateway_url, expiring) == 401
    assert chat(gateway_url, active) == 200

    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/apikey/")
    rows = page.locator("#result_list tbody tr")
    active_row = rows.filter(has_text="active-app")
    expect(active_row.locator("td.field-status")).to_have_text("Active")
    expect(active_row.locator("td.field-status img")).to_have_count(0)  # no red ✗ icon
    expect(active_row.locator("td.field-spend")).to_contain_text("of $10.00")
    expect(rows.filter(has_text="expiring-app").locator("td.field-status")).to_have_text("Expired")
    shot(page, "key-list")
    no_horizontal_overflow(page)


def test_the_route_list_shows_what_is_served_and_each_route_share(wide, gateway_url):
    on = Provider.objects.create(name="prov-on", kind="mock", weight=1)
    heavy = Provider.objects.create(name="prov-heavy", kind="mock", weight=3)
    off = Provider.objects.create(name="prov-off", kind="mock", enabled=False)
    for provider in (on, heavy, off):
        ModelRoute.objects.create(public_model="m", provider=provider, upstream_model="mock-echo")
    ModelRoute.objects.create(public_model="m", provider=Provider.objects.create(
        name="prov-backup", kind="mock"), upstream_model="mock-echo", priority=5)
    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/modelroute/")

    def row(name: str):
        return page.locator("#result_list tbody tr").filter(has_text=name)

    expect(row("prov-off").locator("td.field-served")).to_have_text("No: provider disabled")
    expect(row("prov-off").locator("td.field-share")).to_have_text("—")
    expect(row("prov-on").locator("td.field-served")).to_have_text("Served")
    expect(row("prov-on").locator("td.field-share")).to_have_text("25% at priority 0")
    expect(row("prov-heavy").locator("td.field-share")).to_have_text("75% at priority 0")
    # A blank weight shows the provider's, which it inherits.
    expect(row("prov-heavy").locator("input[name$=weight]")).to_have_attribute("placeholder", "3")
    expect(row("prov-backup").locator("td.field-share")).to_have_text("100% at priority 5")
    shot(page, "routes")
    no_horizontal_overflow(page)


def test_a_bad_base_url_shows_one_error_and_labels_read_as_words(wide, gateway_url):
    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/providers/provider/add/")
    expect(page.locator("label[for=id_api_key]")).to_have_text("API key:")
    expect(page.locator("label[for=id_timeout_s]")).to_have_text("Timeout (s):")
    expect(page.locator("label[for=id_base_url]")).to_have_text("Base URL:")
    page.fill("#id_name", "openai-main")
    page.select_option("#id_kind", "openai")
    page.fill("#id_base_url", "not a url")
    with page.expect_navigation():
        page.click("input[name=_save]")
    errors = page.locator(".field-base_url .errorlist li")
    expect(errors).to_have_count(1)
    expect(errors).to_have_text("Enter a valid URL.")
    shot(page, "provider-bad-url")
    assert not Provider.objects.exists()


def test_the_ledger_filters_searches_and_totals_within_1366_px(wide, gateway_url):
    team = Team.objects.create(name="research")
    alpha, _ = api_key_create(name="alpha-app-with-a-long-descriptive-name", team="research")
    beta, _ = api_key_create(name="beta-app")
    at = timezone.now().replace(microsecond=0) - timedelta(minutes=5)
    ledger_write(at=at, key=alpha, model="gpt-4o-mini", cost="0.0012345600",
                 input_tokens=100, output_tokens=20)
    ledger_write(at=at + timedelta(seconds=7), key=alpha, model="gpt-4o", cost="0.5000000000",
                 input_tokens=1000, output_tokens=200)
    ledger_write(at=at, key=beta, model="gpt-4o", cost="9.0000000000", input_tokens=5,
                 output_tokens=5)
    Provider.objects.create(name="prov-a", kind="mock")
    ModelRoute.objects.create(public_model="gpt-4o", provider=Provider.objects.get(),
                              upstream_model="mock-echo")
    page = wide
    sign_in(page, gateway_url)
    page.goto(f"{gateway_url}/admin/usage/usagerecord/")
    expect(page.locator("#ledger-total")).to_contain_text("3 selected rows")
    expect(page.locator("#ledger-total")).to_contain_text("$9.501235")
    first = page.locator("#result_list tbody tr .field-created_cell").first
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first.inner_text().strip())
    no_horizontal_overflow(page)
    shot(page, "ledger-1366")

    with page.expect_navigation():
        page.locator("#changelist-filter a", has_text="alpha-app").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#ledger-total")).to_contain_text("2 selected rows")
    expect(page.locator("#ledger-total")).to_contain_text("$0.501235")
    expect(page.locator("#ledger-total")).to_contain_text("1,100 input and 220 output tokens")
    with page.expect_navigation():
        page.locator("#changelist-filter a", has_text="gpt-4o").filter(
            has_not_text="mini").first.click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    assert team.name in page.locator("#changelist-filter").inner_text()

    page.goto(f"{gateway_url}/admin/usage/usagerecord/")
    page.fill("#searchbar", "beta-app")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#ledger-total")).to_contain_text("$9.000000")
    shot(page, "ledger-search")

    page.goto(f"{gateway_url}/admin/providers/provider/")
    no_horizontal_overflow(page)
    shot(page, "providers-1366")
