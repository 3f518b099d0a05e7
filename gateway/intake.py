"""What every request is checked for before anything else: its body, its key, its model.

Raises the GatewayError its surface turns into the client's error (401 before the body's own
400s, then 404/403 for the model), so the order of checks is the same on every surface.
"""
from __future__ import annotations

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest

from gateway.errors import (AuthenticationFailed, InvalidRequest, NotFound, PayloadTooLarge,
                            PermissionDenied, ServiceUnavailable)
from providers.cache import snapshot_cache
from providers.keys import api_key_hash
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot


def read_json(request: HttpRequest) -> dict:
    """The request body as a JSON object. Raises PayloadTooLarge or InvalidRequest."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.GATEWAY_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes") from None
    if len(raw) > settings.GATEWAY_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {settings.GATEWAY_MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("could not parse the request body as JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


async def authenticate(request: HttpRequest, snapshot: RoutingSnapshot) -> KeyInfo:
    """The key from `Authorization: Bearer` or `x-api-key`: from the snapshot, or, for a key
    created since it was loaded, from the database (one query per digest, confirmed-unknown
    digests remembered briefly: providers.cache.KeyLookup). Raises AuthenticationFailed for a
    missing key or one the database confirms unknown or revoked (the only 401s, which the
    per-address lockout counts), ServiceUnavailable when the database cannot be asked."""
    raw = ""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        raw = auth[7:].strip()
    if not raw:
        raw = request.headers.get("x-api-key", "").strip()
    if not raw:
        raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>` or `x-api-key`")
    try:
        key = await snapshot_cache.key_find(api_key_hash(raw), snapshot=snapshot)
    except DatabaseError:
        raise ServiceUnavailable("the API key could not be checked: the database is unreachable",
                                 code="key_check_unavailable", headers={"retry-after": "1"}) from None
    if key is None:
        raise AuthenticationFailed("invalid API key")
    return key


def resolve(snapshot: RoutingSnapshot, key: KeyInfo, model: object) -> tuple[Deployment, ...]:
    """The deployments serving `model` for this key. Raises InvalidRequest, NotFound,
    PermissionDenied."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a string", param="model")
    deployments = snapshot.deployments.get(model)
    if not deployments:
        raise NotFound(f"the model `{model[:200]}` does not exist or has no enabled deployment",
                       param="model")
    if not key.may_use(model):
        raise PermissionDenied(f"this API key may not use the model `{model}`", param="model")
    return deployments
