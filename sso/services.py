"""Writes: the Django user an SSO sign-in stands for, created or brought up to date."""
from __future__ import annotations

import logging
from collections.abc import Mapping

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from sso.config import SsoSettings
from sso.models import SsoIdentity
from sso.roles import claim_groups, mapped_groups, roles_for

logger = logging.getLogger(__name__)


class SsoRefused(Exception):
    """The IdP vouched for the person, but the gateway does not let them in; `reason` is one
    of the codes sso.views.FAILURES explains."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _email_allowed(claims: Mapping, domains: tuple[str, ...]) -> bool:
    email = claims.get("email")
    if not domains:
        return True
    if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
        return False
    return email.rsplit("@", 1)[1].lower() in domains


def _new_username(claims: Mapping, subject: str) -> str:
    """A readable label, fixed at the first sign-in: the email if no account holds it as its
    username, else the subject. The account is found by (issuer, subject), never by this."""
    user_model = get_user_model()
    email = claims.get("email")
    for candidate in (email if isinstance(email, str) else "", subject):
        if candidate and len(candidate) <= 150 and \
                not user_model.objects.filter(username__iexact=candidate).exists():
            return candidate
    raise SsoRefused("conflict", f"no free username for subject {subject!r}")


@transaction.atomic
def sso_user_sync(*, issuer: str, claims: Mapping, config: SsoSettings):
    """The user for `claims` (verified ID-token claims merged with userinfo): the one linked to
    (issuer, sub), else a new one with an unusable password. Email and names follow the
    claims; is_staff, is_superuser and membership in the Django groups the mapping names
    follow the IdP groups, at every sign-in. is_active is never changed here: an account an
    administrator deactivated stays out. Raises SsoRefused."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise SsoRefused("invalid", "no usable sub claim")
    if not _email_allowed(claims, config.allowed_email_domains):
        raise SsoRefused("domain", f"email {claims.get('email')!r} not in an allowed domain")
    roles = roles_for(idp_groups=claim_groups(claims, config.groups_claim),
                      group_roles=config.group_roles)

    identity = (SsoIdentity.objects.select_for_update().select_related("user")
                .filter(issuer=issuer, subject=subject).first())
    if identity is None:
        user = get_user_model()(username=_new_username(claims, subject))
        user.set_unusable_password()
        user.save()
        identity = SsoIdentity.objects.create(issuer=issuer, subject=subject, user=user)
        logger.info("sso: created user %s for subject %s", user.get_username(), subject)
    user = identity.user

    email = claims.get("email")
    user.email = email[:254] if isinstance(email, str) else user.email
    for attr, claim in (("first_name", "given_name"), ("last_name", "family_name")):
        if isinstance(claims.get(claim), str):
            setattr(user, attr, claims[claim][:150])
    user.is_staff = roles.staff
    user.is_superuser = roles.superuser
    user.save(update_fields=["email", "first_name", "last_name", "is_staff", "is_superuser"])

    managed = mapped_groups(config.group_roles)
    if managed:
        groups = {name: Group.objects.get_or_create(name=name)[0] for name in managed}
        user.groups.remove(*(groups[name] for name in managed - roles.groups))
        user.groups.add(*(groups[name] for name in roles.groups))
    return user
