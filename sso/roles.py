"""IdP groups -> the person's roles in the gateway. Pure: claims and the mapping in, roles out.

The mapping (GATEWAY_SSO_GROUP_ROLES) gives each IdP group a list of roles: `superuser`,
`staff`, or the name of a Django group (`finance` is the one the reports need; another may hold
admin permissions). Any role makes the person staff: the admin and the reports are both for
staff. A person in no mapped group gets no role: they may use chat.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SUPERUSER = "superuser"
STAFF = "staff"
FLAGS = (SUPERUSER, STAFF)


@dataclass(frozen=True)
class Roles:
    staff: bool
    superuser: bool
    groups: frozenset[str]  # Django groups the person belongs in, of those the mapping names


def claim_groups(claims: Mapping, claim: str) -> frozenset[str]:
    """The IdP groups in `claims[claim]`: a list of names, or one name. A dotted claim name
    that is not itself a key walks nested objects (Keycloak: `realm_access.roles`)."""
    value = claims.get(claim)
    if value is None and "." in claim:
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, (list, tuple)):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def mapped_groups(group_roles: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    """The Django groups the mapping manages: membership in them follows the IdP."""
    return frozenset(role for roles in group_roles.values() for role in roles
                     if role not in FLAGS)


def roles_for(*, idp_groups: frozenset[str],
              group_roles: Mapping[str, tuple[str, ...]]) -> Roles:
    granted = {role for group in idp_groups for role in group_roles.get(group, ())}
    return Roles(staff=bool(granted), superuser=SUPERUSER in granted,
                 groups=frozenset(granted - set(FLAGS)))
