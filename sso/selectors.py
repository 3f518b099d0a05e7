"""Reads of the SSO app."""
from __future__ import annotations

from sso.models import SsoIdentity


def user_is_sso(*, user) -> bool:
    """Whether `user` signs in through the identity provider (their roles are reset from its
    groups at every sign-in, so access is granted there, not in the admin)."""
    return bool(user.is_authenticated) and SsoIdentity.objects.filter(user_id=user.pk).exists()
