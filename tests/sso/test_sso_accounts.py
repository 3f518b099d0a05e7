"""The account an SSO sign-in stands for (sso.services, sso.roles) and the settings that turn SSO
on, without a browser: claims in, the user row out."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User

from sso.config import SsoSettings
from sso.models import SsoIdentity
from sso.roles import claim_groups, mapped_groups, roles_for
from sso.services import SsoRefused, sso_user_sync

ISSUER = "https://idp.example.com"
ROLES = {"gw-admins": ("superuser",), "gw-ops": ("operators",), "gw-finance": ("finance",),
         "gw-staff": ("staff",)}


def config(**overrides) -> SsoSettings:
    values = dict(issuer=ISSUER, client_id="gateway", client_secret="s", scopes="openid email",
                  groups_claim="groups", group_roles=ROLES, allowed_email_domains=(),
                  session_max_age_s=3600, authorization_endpoint="", token_endpoint="",
                  userinfo_endpoint="", jwks_uri="", sign_algo="RS256",
                  token_auth_method="client_secret_basic", timeout_s=5.0)
    return SsoSettings(**{**values, **overrides})


def claims(sub: str = "s-1", **extra) -> dict:
    return {"sub": sub, "email": f"{sub}@example.com", **extra}


def test_roles_follow_the_mapping_and_any_role_makes_staff():
    assert roles_for(idp_groups=frozenset(), group_roles=ROLES) == roles_for(
        idp_groups=frozenset({"unmapped"}), group_roles=ROLES)
    none = roles_for(idp_groups=frozenset({"unmapped"}), group_roles=ROLES)
    assert (none.staff, none.superuser, none.groups) == (False, False, frozenset())
    fin = roles_for(idp_groups=frozenset({"gw-finance"}), group_roles=ROLES)
    assert (fin.staff, fin.superuser, fin.groups) == (True, False, frozenset({"finance"}))
    admin = roles_for(idp_groups=frozenset({"gw-admins", "gw-ops"}), group_roles=ROLES)
    assert (admin.staff, admin.superuser, admin.groups) == (True, True, frozenset({"operators"}))
    staff = roles_for(idp_groups=frozenset({"gw-staff"}), group_roles=ROLES)
    assert (staff.staff, staff.superuser, staff.groups) == (True, False, frozenset())
    assert mapped_groups(ROLES) == frozenset({"operators", "finance"})


def test_the_groups_claim_may_be_a_list_a_string_or_nested():
    assert claim_groups({"groups": ["a", "b", 3]}, "groups") == frozenset({"a", "b"})
    assert claim_groups({"groups": "a"}, "groups") == frozenset({"a"})
    assert claim_groups({"realm_access": {"roles": ["r"]}}, "realm_access.roles") == {"r"}
    assert claim_groups({"https://x.example/groups": ["u"]}, "https://x.example/groups") == {"u"}
    assert claim_groups({}, "groups") == frozenset()
    assert claim_groups({"groups": {"not": "a list"}}, "groups") == frozenset()


@pytest.mark.django_db
def test_first_sign_in_creates_the_user_and_later_ones_follow_the_idp():
    user = sso_user_sync(issuer=ISSUER, claims=claims(
        groups=["gw-admins", "gw-finance"], given_name="Ann", family_name="Lee"), config=config())
    assert (user.username, user.email, user.first_name, user.last_name) == (
        "s-1@example.com", "s-1@example.com", "Ann", "Lee")
    assert (user.is_staff, user.is_superuser, user.has_usable_password()) == (True, True, False)
    assert sorted(user.groups.values_list("name", flat=True)) == ["finance"]
    # A group the mapping does not name is the administrators' to manage: kept.
    user.groups.add(Group.objects.create(name="auditors"))

    again = sso_user_sync(issuer=ISSUER, claims=claims(email="ann@new.example.com", groups=[]),
                          config=config())
    assert again.pk == user.pk and User.objects.count() == 1
    assert (again.username, again.email) == ("s-1@example.com", "ann@new.example.com")
    assert (again.is_staff, again.is_superuser) == (False, False)
    assert list(again.groups.values_list("name", flat=True)) == ["auditors"]


@pytest.mark.django_db
def test_a_local_account_with_the_same_name_is_never_taken_over():
    local = User.objects.create_superuser("s-1@example.com", password="local-password-1")
    user = sso_user_sync(issuer=ISSUER, claims=claims(groups=[]), config=config())
    assert user.pk != local.pk and user.username == "s-1"
    local.refresh_from_db()
    assert (local.is_superuser, local.has_usable_password()) == (True, True)
    assert not SsoIdentity.objects.filter(user=local).exists()

    User.objects.create_user("s-2")
    User.objects.create_user("s-2@example.com")
    with pytest.raises(SsoRefused) as refused:
        sso_user_sync(issuer=ISSUER, claims=claims("s-2"), config=config())
    assert refused.value.reason == "conflict"


@pytest.mark.django_db
def test_the_same_subject_at_another_issuer_is_another_person():
    first = sso_user_sync(issuer=ISSUER, claims=claims(), config=config())
    other = sso_user_sync(issuer="https://other.example.com", claims=claims(),
                          config=config(issuer="https://other.example.com"))
    assert first.pk != other.pk and other.username == "s-1"


@pytest.mark.django_db
def test_allowed_domains_refuse_other_and_unverified_addresses():
    domains = config(allowed_email_domains=("example.com",))
    assert sso_user_sync(issuer=ISSUER, claims=claims(email_verified=True), config=domains)
    for bad in (claims("s-2", email="x@evil.example"), claims("s-3", email_verified=False),
                {"sub": "s-4"}):
        with pytest.raises(SsoRefused) as refused:
            sso_user_sync(issuer=ISSUER, claims=bad, config=domains)
        assert refused.value.reason == "domain"
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_a_deactivated_account_stays_deactivated():
    user = sso_user_sync(issuer=ISSUER, claims=claims(groups=["gw-ops"]), config=config())
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert sso_user_sync(issuer=ISSUER, claims=claims(groups=["gw-ops"]),
                         config=config()).is_active is False


@pytest.mark.parametrize("env, message", [
    ({"GATEWAY_SSO_ISSUER": "https://idp.example.com"}, "needs GATEWAY_SSO_CLIENT_ID"),
    ({"GATEWAY_SSO_ISSUER": "https://idp.example.com", "GATEWAY_SSO_CLIENT_ID": "c",
      "GATEWAY_SSO_CLIENT_SECRET": "s", "GATEWAY_SSO_SIGN_ALGO": "PS256"}, "must be RS256"),
    ({"GATEWAY_SSO_ISSUER": "https://idp.example.com", "GATEWAY_SSO_CLIENT_ID": "c",
      "GATEWAY_SSO_CLIENT_SECRET": "s", "GATEWAY_SSO_SCOPES": "email"}, "include openid"),
])
def test_incomplete_sso_settings_refuse_to_start(env, message):
    result = subprocess.run(
        [sys.executable, "-c", "import gateway.settings"], cwd=django_settings.BASE_DIR,
        env={**os.environ, "DEBUG": "1", **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and message in result.stderr


def test_the_group_roles_setting_parses_lists_per_group():
    result = subprocess.run(
        [sys.executable, "-c", "import gateway.settings as s; print(s.GATEWAY_SSO_GROUP_ROLES)"],
        cwd=django_settings.BASE_DIR, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DEBUG": "1",
             "GATEWAY_SSO_GROUP_ROLES": "gw-admins=superuser,gw-ops=staff;operators"})
    assert result.stdout.strip() == ("{'gw-admins': ('superuser',), "
                                     "'gw-ops': ('staff', 'operators')}")
