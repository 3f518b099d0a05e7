"""Single sign-on in headless Chromium: the live gateway against a real OpenID Connect provider
on loopback (conftest.py). Each person signs in at the IdP's own form and consent page and lands
where the gateway's roles send them; their roles follow the IdP groups at every sign-in; the
password form keeps working for local accounts; the client secret shows up in no page and no
log line. Screenshots land in var/screenshots/."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from playwright.sync_api import expect

from sso.models import SsoIdentity
from tests.sso.idp_fixtures import CLIENT_SECRET, PASSWORD, _identity_provider, idp  # noqa: F401

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
LOCAL_PASSWORD = "a-long-local-password"


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"sso-{name}.png"), full_page=True)


@pytest.fixture
def operators():
    """The Django group GROUP_ROLES gives the IdP's gateway-ops: it may view providers."""
    group = Group.objects.create(name="operators")
    group.permissions.add(*Permission.objects.filter(codename__in=["view_provider",
                                                                   "view_apikey"]))
    return group


@pytest.fixture
def seen(page, gateway_url):
    """Every HTML or JSON body the browser got from the gateway or the IdP."""
    bodies: list[str] = []

    def keep(response):
        if response.request.resource_type in ("document", "fetch", "xhr"):
            try:
                bodies.append(response.text())
            except Exception:  # a redirect has no body to read
                pass

    page.on("response", keep)
    return bodies


def idp_sign_in(page, username: str) -> None:
    """At the IdP: its own sign-in form, then its consent page (first time for this client)."""
    expect(page.locator("#username")).to_be_visible()
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.click("#allow")


def sso_from(page, url: str, start: str, username: str) -> None:
    """Open `start` signed out, follow the sign-in page's SSO button, sign in at the IdP."""
    page.goto(f"{url}{start}")
    page.click("#sso-login")
    idp_sign_in(page, username)


def no_secret_anywhere(seen: list[str], caplog) -> None:
    assert seen, "no page was recorded"
    assert not [body for body in seen if CLIENT_SECRET in body]
    assert CLIENT_SECRET not in caplog.text


def test_a_staff_member_signs_in_to_the_admin_with_sso(page, gateway_url, idp, operators, seen,
                                                       caplog):
    caplog.set_level(logging.DEBUG)
    page.goto(f"{gateway_url}/admin/")
    expect(page).to_have_url(f"{gateway_url}/admin/login/?next=/admin/")
    expect(page.locator("#sso-login")).to_have_text("Sign in with SSO")
    expect(page.locator("#login-form #id_password")).to_be_visible()  # break-glass form kept
    shot(page, "admin-login")
    page.click("#sso-login")
    assert page.url.startswith(f"{idp.issuer}/interaction/")
    shot(page, "idp-login")
    page.fill("#username", "olga")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    expect(page.locator("#allow")).to_be_visible()
    shot(page, "idp-consent")
    page.click("#allow")

    expect(page).to_have_url(f"{gateway_url}/admin/")
    expect(page.locator("#content-main")).to_contain_text("Providers")
    expect(page.locator("#user-tools")).to_contain_text("olga@example.com")
    shot(page, "admin-index-olga")

    user = User.objects.get(sso_identity__subject="sub-olga-0001")
    assert (user.username, user.email, user.is_staff, user.is_superuser) == (
        "olga@example.com", "olga@example.com", True, False)
    assert sorted(user.groups.values_list("name", flat=True)) == ["operators"]
    assert not user.has_usable_password()
    assert SsoIdentity.objects.get(user=user).issuer == idp.issuer
    # The SSO session lasts GATEWAY_SSO_SESSION_MAX_AGE_S (8 h), not Django's two weeks.
    cookie, = (c for c in page.context.cookies(gateway_url) if c["name"] == "sessionid")
    assert abs(cookie["expires"] - (time.time() + 8 * 3600)) < 120

    # Signing out ends the gateway's session (the IdP's is left alone, docs/operations.md).
    page.click("#logout-form button")
    page.goto(f"{gateway_url}/admin/")
    expect(page).to_have_url(f"{gateway_url}/admin/login/?next=/admin/")
    no_secret_anywhere(seen, caplog)


def test_a_finance_member_reads_the_reports_and_a_person_without_the_group_gets_the_403(
        page, gateway_url, idp, seen, caplog):
    caplog.set_level(logging.DEBUG)
    sso_from(page, gateway_url, "/reports/", "fay")
    expect(page).to_have_url(f"{gateway_url}/reports/")
    expect(page.locator("#grand-cost")).to_be_visible()
    shot(page, "reports-fay")
    fay = User.objects.get(username="fay@example.com")
    assert (fay.is_staff, fay.is_superuser) == (True, False)
    assert list(fay.groups.values_list("name", flat=True)) == ["finance"]

    page.context.clear_cookies()
    sso_from(page, gateway_url, "/reports/", "ned")
    expect(page).to_have_url(f"{gateway_url}/reports/")
    expect(page.locator("#reason")).to_have_text("Reports are for the finance group.")
    expect(page.locator("#destinations")).to_contain_text("Chat")
    # An SSO user's groups come from the IdP (reset at every sign-in): the page says so,
    # rather than sending them to an administrator's Groups box.
    expect(page.locator("main")).to_contain_text("identity provider's groups")
    expect(page.locator("main")).not_to_contain_text("Users → your account → Groups")
    shot(page, "reports-403-ned")
    ned = User.objects.get(username="ned@example.com")
    assert (ned.is_staff, ned.is_superuser, ned.groups.count()) == (False, False, 0)
    no_secret_anywhere(seen, caplog)


def test_anyone_the_idp_knows_signs_in_to_chat(page, gateway_url, idp):
    page.goto(f"{gateway_url}/chat/")
    expect(page).to_have_url(f"{gateway_url}/chat/login/?next=/chat/")
    expect(page.locator("#id_password")).to_be_visible()  # the local form stays beside it
    shot(page, "chat-login")
    page.click("#sso-login")
    idp_sign_in(page, "ned")
    expect(page).to_have_url(f"{gateway_url}/chat/")
    shot(page, "chat-ned")
    assert User.objects.filter(sso_identity__subject="sub-ned-0003").count() == 1


def test_a_person_removed_from_an_idp_group_loses_the_role_at_the_next_sign_in(
        page, gateway_url, idp):
    sso_from(page, gateway_url, "/admin/", "ada")
    expect(page).to_have_url(f"{gateway_url}/admin/")
    ada = User.objects.get(sso_identity__subject="sub-ada-0004")
    assert (ada.is_staff, ada.is_superuser) == (True, True)
    assert list(ada.groups.values_list("name", flat=True)) == ["finance"]
    page.click("#logout-form button")

    idp.set_groups("ada", ["gateway-finance"])
    # The IdP still has her session and her consent: no form, straight back to the gateway.
    page.goto(f"{gateway_url}/reports/")
    page.click("#sso-login")
    expect(page).to_have_url(f"{gateway_url}/reports/")
    ada.refresh_from_db()
    assert (ada.is_staff, ada.is_superuser) == (True, False)
    assert list(ada.groups.values_list("name", flat=True)) == ["finance"]
    page.goto(f"{gateway_url}/admin/")  # finance staff, no longer a superuser
    expect(page.locator("#content-main")).to_contain_text("permission to view or edit anything")

    idp.set_groups("ada", [])
    page.goto(f"{gateway_url}/sso/login/?next=/reports/")
    expect(page.locator("#reason")).to_have_text("Reports are for the finance group.")
    ada.refresh_from_db()
    assert (ada.is_staff, ada.is_superuser, ada.groups.count()) == (False, False, 0)
    shot(page, "ada-after-removal")
    assert User.objects.filter(sso_identity__isnull=False).count() == 1


def test_local_break_glass_login_works_with_sso_on_and_the_idp_down(
        page, gateway_url, idp, settings, seen, caplog):
    from sso.config import discovery_cache

    caplog.set_level(logging.DEBUG)
    User.objects.create_superuser("root", password=LOCAL_PASSWORD)
    settings.GATEWAY_SSO_ISSUER = "http://127.0.0.1:9"  # nothing listens there
    discovery_cache.clear()

    page.goto(f"{gateway_url}/admin/login/?next=/admin/")
    expect(page.locator("#sso-login")).to_be_visible()
    page.fill("#id_username", "root")
    page.fill("#id_password", LOCAL_PASSWORD)
    with page.expect_navigation():
        page.click("#login-form input[type=submit]")
    expect(page).to_have_url(f"{gateway_url}/admin/")
    expect(page.locator("#user-tools")).to_contain_text("root")
    shot(page, "break-glass-root")

    page.context.clear_cookies()
    page.goto(f"{gateway_url}/admin/login/?next=/admin/")
    page.click("#sso-login")
    expect(page).to_have_url(f"{gateway_url}/sso/failed/?reason=provider")
    expect(page.locator("#reason")).to_contain_text("could not be reached")
    shot(page, "sso-failed-provider")
    no_secret_anywhere(seen, caplog)


def test_a_wrong_client_secret_fails_without_showing_or_logging_it(
        page, gateway_url, idp, settings, seen, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-Kx93mB2q"
    settings.GATEWAY_SSO_CLIENT_SECRET = wrong
    sso_from(page, gateway_url, "/admin/", "olga")
    expect(page).to_have_url(f"{gateway_url}/sso/failed/?reason=provider")
    assert User.objects.filter(username="olga@example.com").count() == 0
    assert "identity provider failed" in caplog.text and "401" in caplog.text
    assert not [body for body in seen if wrong in body]
    assert wrong not in caplog.text


def test_sso_off_means_no_button_and_no_sso_pages(page, gateway_url, settings):
    settings.GATEWAY_SSO_ISSUER = ""
    page.goto(f"{gateway_url}/admin/login/")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#sso-login")).to_have_count(0)
    for path in ("/sso/login/", "/sso/callback/?code=x&state=y", "/sso/failed/"):
        assert page.goto(f"{gateway_url}{path}").status == 404


def test_explicit_endpoints_skip_discovery_and_a_token_from_another_issuer_is_refused(
        page, gateway_url, idp, settings):
    settings.GATEWAY_SSO_AUTHORIZATION_ENDPOINT = f"{idp.issuer}/auth"
    settings.GATEWAY_SSO_TOKEN_ENDPOINT = f"{idp.issuer}/token"
    settings.GATEWAY_SSO_USERINFO_ENDPOINT = f"{idp.issuer}/me"
    settings.GATEWAY_SSO_JWKS_URI = f"{idp.issuer}/jwks"
    settings.GATEWAY_SSO_ISSUER = "http://127.0.0.1:9"  # no discovery document there
    page.goto(f"{gateway_url}/sso/login/?next=/chat/")
    idp_sign_in(page, "ned")
    expect(page).to_have_url(f"{gateway_url}/sso/failed/?reason=invalid")
    expect(page.locator("#reason")).to_contain_text("could not be verified")
    assert User.objects.filter(username="ned@example.com").count() == 0

    settings.GATEWAY_SSO_ISSUER = idp.issuer
    page.goto(f"{gateway_url}/sso/login/?next=/chat/")
    expect(page).to_have_url(f"{gateway_url}/chat/")  # the IdP remembers her: no form
    assert User.objects.filter(username="ned@example.com").count() == 1


def test_a_deactivated_account_is_refused_and_next_never_leaves_the_gateway(
        page, gateway_url, idp):
    page.goto(f"{gateway_url}/sso/login/?next=https://evil.example/")
    idp_sign_in(page, "olga")
    expect(page).to_have_url(f"{gateway_url}/chat/")  # `/` sends a role-less person to chat
    # Leave the chat page before the account is deactivated: its next call would get a 401 and
    # send the page to the chat sign-in, racing the navigation below.
    page.goto("about:blank")
    page.context.clear_cookies()
    User.objects.filter(username="olga@example.com").update(is_active=False)
    sso_from(page, gateway_url, "/admin/", "olga")
    expect(page).to_have_url(f"{gateway_url}/sso/failed/?reason=inactive")
    expect(page.locator("#reason")).to_contain_text("deactivated")
    page.goto(f"{gateway_url}/admin/")
    expect(page).to_have_url(f"{gateway_url}/admin/login/?next=/admin/")


def test_a_sign_in_refused_at_the_idp_lands_on_the_failure_page(page, gateway_url, idp):
    page.goto(f"{gateway_url}/admin/login/?next=/admin/")
    page.click("#sso-login")
    page.fill("#username", "fay")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.click("#deny")
    expect(page).to_have_url(f"{gateway_url}/sso/failed/?reason=denied")
    expect(page.locator("#reason")).to_contain_text("did not sign you in")
    expect(page.locator("#local-login")).to_be_visible()
    shot(page, "sso-failed-denied")
    assert User.objects.count() == 0
