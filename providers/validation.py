"""Where provider keys may be sent: base URLs are admin-set and checked on save.

Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, metadata.google.internal …)
are refused unless GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS is on: a provider key must never be
handed to an instance-metadata service.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"}


def base_url_problem(url: str) -> str | None:
    """None when `url` is an acceptable upstream base URL, else the reason it is not."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username or parts.password:
        return "must not contain credentials (use api_key / extra_headers)"
    if settings.GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS:
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
