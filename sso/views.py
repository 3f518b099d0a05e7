"""The SSO pages: /sso/login/ (to the IdP), /sso/callback/ (back from it) and /sso/failed/.

All three are 404 while SSO is off. A failure never shows a traceback: the callback sends the
browser to /sso/failed/?reason=<code>, which explains the code in words (FAILURES) and offers
both sign-in routes again. What went wrong is logged, without the client secret or a token.
"""
from __future__ import annotations

import logging
from urllib.parse import urlencode

import requests
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.generic import View
from mozilla_django_oidc.views import (OIDCAuthenticationCallbackView,
                                       OIDCAuthenticationRequestView)

from sso.config import SsoUnavailable, oidc_setting, sso_enabled, sso_endpoints, sso_settings
from sso.services import SsoRefused

logger = logging.getLogger(__name__)

FAILURES = {
    "denied": "The identity provider did not sign you in (the sign-in was cancelled or "
              "refused there).",
    "domain": "Your email address is not in a domain this gateway accepts.",
    "inactive": "Your gateway account is deactivated. Ask a gateway administrator.",
    "conflict": "Your account could not be created: its name is taken by another account. "
                "Ask a gateway administrator.",
    "invalid": "The sign-in could not be verified. It may have expired or been opened twice; "
               "try again.",
    "provider": "The identity provider could not be reached or refused the gateway. Try again "
                "later, or sign in with a local account.",
}


def _failed(reason: str) -> HttpResponseRedirect:
    return HttpResponseRedirect(f"{reverse('sso:failed')}?{urlencode({'reason': reason})}")


class SsoLoginView(OIDCAuthenticationRequestView):
    """GET /sso/login/?next=<path>: to the IdP's authorization endpoint (code flow, PKCE S256,
    state and nonce kept in the session)."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs) -> None:
        View.__init__(self, **kwargs)  # the library's reads the endpoint before dispatch

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        config = sso_settings()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = sso_endpoints(config).authorization
        except SsoUnavailable as exc:
            logger.warning("sso: %s", exc)
            return _failed("provider")
        self.OIDC_RP_CLIENT_ID = config.client_id
        return super().get(request)


class SsoCallbackView(OIDCAuthenticationCallbackView):
    """GET /sso/callback/?code&state: the code exchanged, the user synced and signed in, for
    at most GATEWAY_SSO_SESSION_MAX_AGE_S; then the `next` given to /sso/login/, else `/`."""

    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        self.reason = "denied" if request.GET.get("error") else "invalid"
        try:
            return super().get(request)
        except SsoRefused as exc:
            logger.warning("sso: sign-in refused: %s", exc)
            return _failed(exc.reason)
        except (SsoUnavailable, requests.RequestException) as exc:
            # requests' messages name the URL and status, never the request body or headers.
            logger.warning("sso: identity provider failed: %s", exc)
            return _failed("provider")
        except SuspiciousOperation as exc:
            logger.warning("sso: sign-in not verified: %s", exc)
            return _failed("invalid")

    def login_success(self) -> HttpResponse:
        response = super().login_success()
        self.request.session.set_expiry(sso_settings().session_max_age_s)
        return response

    def login_failure(self) -> HttpResponse:
        user = getattr(self, "user", None)
        return _failed("inactive" if user is not None and not user.is_active else self.reason)


def sso_failed(request: HttpRequest) -> HttpResponse:
    """GET /sso/failed/?reason=<code>: the reason in words, and both ways to sign in."""
    if not sso_enabled():
        raise Http404("single sign-on is not configured")
    reason = request.GET.get("reason", "")
    status = 502 if reason == "provider" else 403
    return render(request, "registration/sso_failed.html",
                  {"reason": FAILURES.get(reason, FAILURES["invalid"]),
                   "reason_code": reason if reason in FAILURES else "invalid"}, status=status)
