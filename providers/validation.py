"""Where the gateway may send things: provider base URLs (with a provider key) and budget alert
webhooks (with spend figures). Both are admin-set and checked on save by the same rule.

An http(s) URL with a host and no credentials in it. Link-local and cloud metadata addresses
(169.254.0.0/16, fe80::/10, metadata.google.internal …) are refused: a provider key or an alert
must never be handed to an instance-metadata service. GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS lifts
that for provider URLs only (an upstream on a link-local address); a webhook never needs one.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"}


def _url_problem(url: str, *, credentials_hint: str, allow_link_local: bool) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username or parts.password:
        return f"must not contain credentials ({credentials_hint})"
    if allow_link_local:
        return None
    host = parts.hostname.rstrip(".").lower()
    if host in METADATA_HOSTS:
        return "points at a cloud metadata service"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_link_local or (address.version == 6 and address.ipv4_mapped
                                 and address.ipv4_mapped.is_link_local):
        return "points at a link-local (metadata) address"
    return None


def base_url_problem(url: str) -> str | None:
    """None when `url` is an acceptable upstream base URL, else the reason it is not."""
    return _url_problem(url, credentials_hint="use api_key / extra_headers",
                        allow_link_local=settings.GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS)


def webhook_url_problem(url: str) -> str | None:
    """None when `url` is an acceptable budget alert webhook, else the reason it is not."""
    return _url_problem(url, credentials_hint="put a token in the path or query instead",
                        allow_link_local=False)


def webhook_url_validate(value: str) -> None:
    """Model field validator for webhook URLs. Raises ValidationError with the reason."""
    problem = webhook_url_problem(value) if value else None
    if problem:
        raise ValidationError(f"The URL {problem}.", code="webhook_url")
