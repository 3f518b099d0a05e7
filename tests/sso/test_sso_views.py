"""The SSO pages given bad or hostile input, without an IdP: the explicit endpoints point at a
closed port, and nothing here may reach them."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client


@pytest.fixture
def sso_on(settings):
    settings.GATEWAY_SSO_ISSUER = "http://127.0.0.1:9"
    settings.GATEWAY_SSO_CLIENT_ID = "gateway"
    settings.GATEWAY_SSO_CLIENT_SECRET = "views-test-secret-7Hq"
    for name, path in (("AUTHORIZATION_ENDPOINT", "auth"), ("TOKEN_ENDPOINT", "token"),
                       ("JWKS_URI", "jwks")):
        setattr(settings, f"GATEWAY_SSO_{name}", f"http://127.0.0.1:9/{path}")


@pytest.mark.django_db
def test_the_login_redirect_carries_state_nonce_and_pkce_and_no_secret(sso_on):
    response = Client().get("/sso/login/?next=/reports/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == "http://127.0.0.1:9/auth"
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "gateway"
    assert query["redirect_uri"] == "http://testserver/sso/callback/"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) == 32 and len(query["nonce"]) == 32
    assert "views-test-secret-7Hq" not in response["Location"]


@pytest.mark.django_db
@pytest.mark.parametrize("query, reason", [
    ("code=x&state=y", "invalid"),            # no flow started in this session
    ("error=access_denied&state=y", "denied"),
    ("", "invalid"),
])
def test_a_callback_outside_a_flow_lands_on_the_failure_page(sso_on, query, reason):
    response = Client().get(f"/sso/callback/?{query}")
    assert (response.status_code, response["Location"]) == (302, f"/sso/failed/?reason={reason}")


@pytest.mark.django_db
def test_a_callback_with_another_state_is_refused_without_reaching_the_idp(sso_on):
    client = Client()
    assert client.get("/sso/login/").status_code == 302
    response = client.get("/sso/callback/?code=stolen&state=not-the-one-sent")
    assert (response.status_code, response["Location"]) == (302, "/sso/failed/?reason=invalid")
    page = client.get(response["Location"])
    assert page.status_code == 403
    assert b"could not be verified" in page.content


@pytest.mark.django_db
def test_the_failure_page_says_only_its_own_words(sso_on):
    page = Client().get("/sso/failed/?reason=<script>alert(1)</script>")
    assert page.status_code == 403
    assert b"<script>alert" not in page.content and b"could not be verified" in page.content
    assert Client().get("/sso/failed/?reason=provider").status_code == 502
