"""SSO settings as one typed value, the IdP's endpoints (its discovery document, cached), and the
settings mozilla-django-oidc asks for by name, answered from both.

Nothing here runs while SSO is off, and nothing reaches the IdP until someone signs in with it:
the discovery document is fetched on the first SSO sign-in (or the first after an hour) and
never on a password sign-in, so the break-glass login works while the IdP is down.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests
from django.conf import settings
from mozilla_django_oidc.utils import import_from_settings

DISCOVERY_TTL_S = 3600.0


class SsoUnavailable(Exception):
    """The IdP's discovery document could not be fetched or does not describe the issuer."""


@dataclass(frozen=True)
class SsoSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: str
    groups_claim: str
    group_roles: Mapping[str, tuple[str, ...]]
    allowed_email_domains: tuple[str, ...]
    session_max_age_s: int
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    sign_algo: str
    token_auth_method: str
    timeout_s: float


def sso_enabled() -> bool:
    return bool(settings.GATEWAY_SSO_ISSUER)


def sso_settings() -> SsoSettings:
    """The GATEWAY_SSO_* settings (validated by gateway/settings.py), read at call time."""
    return SsoSettings(
        issuer=settings.GATEWAY_SSO_ISSUER, client_id=settings.GATEWAY_SSO_CLIENT_ID,
        client_secret=settings.GATEWAY_SSO_CLIENT_SECRET, scopes=settings.GATEWAY_SSO_SCOPES,
        groups_claim=settings.GATEWAY_SSO_GROUPS_CLAIM,
        group_roles=settings.GATEWAY_SSO_GROUP_ROLES,
        allowed_email_domains=settings.GATEWAY_SSO_ALLOWED_EMAIL_DOMAINS,
        session_max_age_s=settings.GATEWAY_SSO_SESSION_MAX_AGE_S,
        authorization_endpoint=settings.GATEWAY_SSO_AUTHORIZATION_ENDPOINT,
        token_endpoint=settings.GATEWAY_SSO_TOKEN_ENDPOINT,
        userinfo_endpoint=settings.GATEWAY_SSO_USERINFO_ENDPOINT,
        jwks_uri=settings.GATEWAY_SSO_JWKS_URI, sign_algo=settings.GATEWAY_SSO_SIGN_ALGO,
        token_auth_method=settings.GATEWAY_SSO_TOKEN_AUTH_METHOD,
        timeout_s=settings.GATEWAY_SSO_TIMEOUT_S)


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    userinfo: str  # empty: the claims come from the ID token alone
    jwks: str


class _DiscoveryCache:
    """issuer -> (fetched at, document); one entry per issuer configured in this process."""

    def __init__(self, max_entries: int = 4) -> None:
        self._entries: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, issuer: str, now: float) -> dict | None:
        with self._lock:
            entry = self._entries.get(issuer)
        return entry[1] if entry and now - entry[0] < DISCOVERY_TTL_S else None

    def put(self, issuer: str, now: float, document: dict) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[issuer] = (now, document)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


discovery_cache = _DiscoveryCache()


def discovery_document(config: SsoSettings) -> dict:
    """The issuer's /.well-known/openid-configuration, checked to name the issuer itself
    (OpenID Connect Discovery 4.3). Raises SsoUnavailable."""
    now = time.monotonic()
    document = discovery_cache.get(config.issuer, now)
    if document is not None:
        return document
    url = f"{config.issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=config.timeout_s)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SsoUnavailable(f"discovery document {url}: {exc.__class__.__name__}") from None
    if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != config.issuer:
        raise SsoUnavailable(f"discovery document {url} names another issuer")
    discovery_cache.put(config.issuer, now, document)
    return document


def sso_endpoints(config: SsoSettings) -> Endpoints:
    """The endpoints set in settings, the rest from discovery (fetched only if one of the
    authorization, token and JWKS endpoints is not set). Raises SsoUnavailable."""
    explicit = (config.authorization_endpoint, config.token_endpoint, config.jwks_uri)
    document = {} if all(explicit) else discovery_document(config)
    endpoints = Endpoints(
        authorization=config.authorization_endpoint or document.get("authorization_endpoint", ""),
        token=config.token_endpoint or document.get("token_endpoint", ""),
        userinfo=config.userinfo_endpoint or document.get("userinfo_endpoint", ""),
        jwks=config.jwks_uri or document.get("jwks_uri", ""))
    if not (endpoints.authorization and endpoints.token and endpoints.jwks):
        raise SsoUnavailable("the IdP names no authorization, token or JWKS endpoint")
    return endpoints


# The settings mozilla-django-oidc reads, by its names; others fall back to Django settings.
_FIXED = {
    "OIDC_RP_IDP_SIGN_KEY": None,  # keys come from the JWKS endpoint
    "OIDC_USE_NONCE": True,
    "OIDC_USE_PKCE": True,
    "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
    "OIDC_STORE_ACCESS_TOKEN": False,
    "OIDC_STORE_ID_TOKEN": False,
    "OIDC_ALLOW_UNSECURED_JWT": False,
    "OIDC_VERIFY_SSL": True,
    "OIDC_CREATE_USER": True,
    "OIDC_AUTHENTICATION_CALLBACK_URL": "sso:callback",
    "OIDC_REDIRECT_FIELD_NAME": "next",
    "OIDC_AUTH_REQUEST_EXTRA_PARAMS": {},
    "LOGIN_REDIRECT_URL": "home",
}
_ENDPOINTS = {"OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization", "OIDC_OP_TOKEN_ENDPOINT": "token",
              "OIDC_OP_USER_ENDPOINT": "userinfo", "OIDC_OP_JWKS_ENDPOINT": "jwks"}


def oidc_setting(name: str, *default):
    """mozilla-django-oidc's `get_settings(name, *default)`, answered from SsoSettings."""
    if name in _FIXED:
        return _FIXED[name]
    config = sso_settings()
    if name in _ENDPOINTS:
        return getattr(sso_endpoints(config), _ENDPOINTS[name])
    by_name = {
        "OIDC_RP_CLIENT_ID": config.client_id,
        "OIDC_RP_CLIENT_SECRET": config.client_secret,
        "OIDC_RP_SIGN_ALGO": config.sign_algo,
        "OIDC_RP_SCOPES": config.scopes,
        "OIDC_TIMEOUT": config.timeout_s,
        "OIDC_TOKEN_USE_BASIC_AUTH": config.token_auth_method == "client_secret_basic",
    }
    if name in by_name:
        return by_name[name]
    return import_from_settings(name, *default)
