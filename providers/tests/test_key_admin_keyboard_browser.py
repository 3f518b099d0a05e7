"""Creating an API key in the admin with the keyboard only, in headless Chromium against the
live gateway: signing in, reaching the add form from the admin's index, every field in Tab
order, the team and budget period picked by typing, the allowed models typed into their
picker, Save pressed with Space, the secret's Copy button reached and pressed, and the page
left by its Done link. The key's row is checked in the database and its secret through the API.
Screenshots: var/screenshots/<test name>-1366.png and -390.png."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from playwright.sync_api import expect

from providers.keys import api_key_hash
from providers.models import ApiKey, ModelRoute, Price, Provider, Team
from providers.services import config_version_bump
from usage.tests.test_reports import make_user

PASSWORD = "a-long-test-password"
WIDE = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

# The add form's controls a keyboard user must reach, in the order Tab reaches them.
FORM_CONTROLS = ["#id_name", "#id_team", "#id_allowed_models", "#id_expires_at_0",
                 "#id_expires_at_1", "#id_budget_usd", "#id_budget_period",
                 "#id_budget_alert_pct", "#id_rpm_limit", "#id_tpm_limit",
                 "#id_max_tokens_default", "#id_revoked", "input[name=_save]"]


@pytest.fixture
def page(browser):
    """1366 px wide, allowed to use the clipboard (the Copy button)."""
    context = browser.new_context(viewport=WIDE,
                                  permissions=["clipboard-read", "clipboard-write"])
    yield context.new_page()
    context.close()


def screenshots(page, name: str) -> None:
    folder = Path(settings.BASE_DIR) / "var" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for size in (WIDE, PHONE):
        page.set_viewport_size(size)
        page.screenshot(path=str(folder / f"{name}-{size['width']}.png"), full_page=True)
    page.set_viewport_size(WIDE)


def focused(page, selector: str) -> bool:
    return page.evaluate("s => document.activeElement?.matches(s) ?? false", selector)


def tab_to(page, selector: str, limit: int = 120) -> int:
    """Press Tab until `selector` has the focus; returns how many presses it took."""
    for presses in range(limit):
        if focused(page, selector):
            return presses
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never got the focus with Tab")


def test_a_key_is_created_with_the_keyboard_only(page, gateway_url, request):
    provider = Provider.objects.create(name="mock-a", kind="mock")
    Price.objects.create(upstream_model="mock-echo", input_per_mtok=Decimal("0.15"),
                         output_per_mtok=Decimal("0.60"))
    for name in ("gpt-4o-mini", "gpt-4o", "claude-x"):
        ModelRoute.objects.create(public_model=name, provider=provider, upstream_model="mock-echo")
    config_version_bump()
    finance = Team.objects.create(name="finance")
    Team.objects.create(name="research")
    make_user("root", password=PASSWORD, superuser=True)

    # Sign in: type, Tab, type, Enter.
    page.goto(f"{gateway_url}/admin/login/?next=/admin/")
    tab_to(page, "#id_username")
    page.keyboard.type("root")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")

    # From the admin's index to the add form.
    tab_to(page, "a[href='/admin/providers/apikey/add/']")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page).to_have_url(f"{gateway_url}/admin/providers/apikey/add/")

    # Every control is reached with Tab, in the form's order.
    order = [tab_to(page, FORM_CONTROLS[0])]
    for selector in FORM_CONTROLS[1:]:
        order.append(tab_to(page, selector))
    assert all(presses >= 1 for presses in order[1:]), order
    page.keyboard.press("Shift+Tab")
    assert not focused(page, "input[name=_save]")

    tab_to(page, "#id_name")  # Tab goes round the page back to the first field
    page.keyboard.type("billing")
    tab_to(page, "#id_team")
    page.keyboard.type("finance")  # a closed <select> picks the option typed
    expect(page.locator("#id_team")).to_have_value(str(finance.pk))
    tab_to(page, "#id_allowed_models")
    page.keyboard.type("gpt-4o-mini, gpt-4o")
    tab_to(page, "#id_expires_at_0")
    page.keyboard.type("2031-01-31")
    tab_to(page, "#id_expires_at_1")
    page.keyboard.type("12:30:00")
    tab_to(page, "#id_budget_usd")
    page.keyboard.type("25")
    tab_to(page, "#id_budget_period")
    page.keyboard.type("week")
    expect(page.locator("#id_budget_period")).to_have_value("week")
    tab_to(page, "#id_rpm_limit")
    page.keyboard.type("60")
    tab_to(page, "input[name=_save]")
    with page.expect_navigation():
        page.keyboard.press("Space")

    # The secret, shown once: the Copy button has the focus; Enter copies.
    expect(page.locator(".secret-warning")).to_contain_text("Shown once")
    copy = page.locator("button.copy-secret")
    expect(copy).to_be_focused()
    secret = page.locator(".secret-value").input_value()
    page.keyboard.press("Enter")
    expect(copy).to_have_text("Copied")
    expect(page.locator(".copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    # The focus stays on the button, so Tab goes on to what follows it.
    expect(copy).to_be_focused()
    screenshots(page, request.node.name)

    key = ApiKey.objects.get()
    assert (key.name, key.team_id, key.allowed_models) == ("billing", finance.pk,
                                                           ["gpt-4o", "gpt-4o-mini"])
    assert (key.budget_usd, key.budget_period, key.rpm_limit) == (Decimal("25"), "week", 60)
    assert key.expires_at == datetime(2031, 1, 31, 12, 30, tzinfo=dt_timezone.utc)
    assert not key.revoked and key.key_hash == api_key_hash(secret)
    assert secret.startswith(key.prefix)

    tab_to(page, f"a[href='/admin/providers/apikey/{key.pk}/change/']")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#id_name")).to_have_value("billing")

    # The copied secret works for the models typed, and only for them.
    def status(model: str) -> int:
        return httpx.post(f"{gateway_url}/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {secret}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
                          ).status_code

    assert (status("gpt-4o"), status("claude-x")) == (200, 403)
