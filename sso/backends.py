"""The OIDC authentication backend: mozilla-django-oidc's code exchange and ID-token signature
check, plus what it leaves to the application: the token's issuer and audience, userinfo that
speaks of the same subject, and the user (sso.services.sso_user_sync).

Inert for every call but the callback's: a password sign-in never reaches the IdP.
"""
from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from sso.config import oidc_setting, sso_enabled, sso_endpoints, sso_settings
from sso.services import SsoRefused, sso_user_sync


class SsoBackend(OIDCAuthenticationBackend):
    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args, **kwargs) -> None:
        # The library's __init__ reads every endpoint; Django builds a backend for each
        # password sign-in and each request's user, so the endpoints are read lazily instead.
        ModelBackend.__init__(self)
        from django.contrib.auth import get_user_model

        self.UserModel = get_user_model()

    OIDC_OP_TOKEN_ENDPOINT = property(lambda self: oidc_setting("OIDC_OP_TOKEN_ENDPOINT"))
    OIDC_OP_USER_ENDPOINT = property(lambda self: oidc_setting("OIDC_OP_USER_ENDPOINT"))
    OIDC_OP_JWKS_ENDPOINT = property(lambda self: oidc_setting("OIDC_OP_JWKS_ENDPOINT"))
    OIDC_RP_CLIENT_ID = property(lambda self: oidc_setting("OIDC_RP_CLIENT_ID"))
    OIDC_RP_CLIENT_SECRET = property(lambda self: oidc_setting("OIDC_RP_CLIENT_SECRET"))
    OIDC_RP_SIGN_ALGO = property(lambda self: oidc_setting("OIDC_RP_SIGN_ALGO"))
    OIDC_RP_IDP_SIGN_KEY = property(lambda self: oidc_setting("OIDC_RP_IDP_SIGN_KEY"))

    def authenticate(self, request, **kwargs):
        """Only the callback (sso.views.SsoCallbackView) passes `nonce`; every other
        authenticate() call, a password sign-in included, gets None from here."""
        if not sso_enabled() or "nonce" not in kwargs or request is None:
            return None
        return super().authenticate(request, **kwargs)

    def get_user(self, user_id):
        # ModelBackend's: an account deactivated since it signed in loses its session.
        return ModelBackend.get_user(self, user_id)

    def get_userinfo(self, access_token, id_token, payload):
        """The claims: the verified ID token's, checked for issuer and audience (OIDC Core
        3.1.3.7), updated with the userinfo endpoint's when the IdP has one, whose `sub` must
        be the token's (5.3.2)."""
        config = sso_settings()
        if str(payload.get("iss", "")).rstrip("/") != config.issuer:
            raise SuspiciousOperation("ID token from another issuer")
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if config.client_id not in audiences:
            raise SuspiciousOperation("ID token for another audience")
        if len(audiences) > 1 and payload.get("azp") != config.client_id:
            raise SuspiciousOperation("ID token authorized for another party")
        claims = dict(payload)
        if sso_endpoints(config).userinfo:
            userinfo = super().get_userinfo(access_token, id_token, payload)
            if not isinstance(userinfo, dict) or userinfo.get("sub") != payload.get("sub"):
                raise SuspiciousOperation("userinfo for another subject")
            claims.update(userinfo)
        return claims

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        return sso_user_sync(issuer=sso_settings().issuer, claims=claims, config=sso_settings())
