"""`/` sends each person to what they may use, the 403 page names the access needed and lists
the rest, and the menus show only what the person may open; in headless Chromium at 1366 px
and 390 px against the live gateway. Screenshots land in var/screenshots/."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from usage.tests.test_reports import make_user

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
PASSWORD = "a-long-test-password"


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"home-{name}.png"), full_page=True)


@pytest.fixture(params=[1366, 390], ids=["1366px", "390px"])
def sized(browser, request):
    context = browser.new_context(viewport={"width": request.param, "height": 844})
    page = context.new_page()
    page.width = request.param
    yield page
    context.close()


def sign_in(page, url: str, username: str) -> None:
    """Through `/`: anonymous visitors are sent to the sign-in page, and back after."""
    page.goto(f"{url}/")
    expect(page).to_have_url(f"{url}/chat/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")


def no_horizontal_overflow(page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, "
                           "document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"page {widths[0]} px wide in {widths[1]} px"


def test_root_sends_each_role_where_it_may_go(page, gateway_url):
    make_user("root", superuser=True, password=PASSWORD)
    make_user("fin", finance=True, password=PASSWORD)
    make_user("writer", staff=False, password=PASSWORD)
    keeper = make_user("keeper", password=PASSWORD)
    keeper.user_permissions.add(Permission.objects.get(codename="view_apikey"))

    for username, lands in (("root", "/admin/"), ("keeper", "/admin/"), ("fin", "/reports/"),
                            ("writer", "/chat/")):
        page.context.clear_cookies()
        sign_in(page, gateway_url, username)
        expect(page).to_have_url(f"{gateway_url}{lands}")
        page.goto(f"{gateway_url}/")
        expect(page).to_have_url(f"{gateway_url}{lands}")
        shot(page, f"root-{username}")

    # The reports menu offers the admin only to who may use it.
    page.context.clear_cookies()
    sign_in(page, gateway_url, "fin")
    nav = page.locator("header.bar nav")
    expect(nav.get_by_role("link", name="Chat")).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    page.context.clear_cookies()
    sign_in(page, gateway_url, "root")
    page.goto(f"{gateway_url}/reports/")
    expect(page.locator("header.bar nav").get_by_role("link", name="Admin")).to_be_visible()


def test_staff_outside_finance_get_a_helpful_403(sized, gateway_url):
    page = sized
    keeper = make_user("keeper", password=PASSWORD)
    keeper.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    sign_in(page, gateway_url, "keeper")
    response = page.goto(f"{gateway_url}/reports/")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("You don't have access to this page")
    expect(page.locator("#reason")).to_have_text("Reports are for the finance group.")
    places = page.locator("#destinations a")
    expect(places).to_have_text(["Admin", "Chat"])
    expect(page.locator(".who")).to_contain_text("keeper")
    # Styled: the card is on a tinted page, not the browser's default.
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
    shot(page, f"403-{page.width}")
    no_horizontal_overflow(page)
    with page.expect_navigation():
        places.first.click()
    expect(page).to_have_url(f"{gateway_url}/admin/")
