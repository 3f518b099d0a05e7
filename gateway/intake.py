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
from providers.cache import key_cache
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


async def authenticate(request: HttpRequest, _snapshot: RoutingSnapshot | None = None) -> KeyInfo:
    """The key from `Authorization: Bearer` or `x-api-key`, by its digest, from the process's
    key cache or the database (one query per digest, confirmed-unknown digests remembered
    briefly: providers.cache.KeyCache). Keys are not part of the routing snapshot (issue 18);
    the second argument is accepted so that callers may pass the one they serve from. Raises
    AuthenticationFailed for a missing key or one the database confirms unknown, revoked or
    expired (the only 401s, which the per-address lockout counts), ServiceUnavailable when the
    database cannot be asked."""
    raw = ""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        raw = auth[7:].strip()
    if not raw:
        raw = request.headers.get("x-api-key", "").strip()
    if not raw:
        raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>` or `x-api-key`")
    try:
        key = await key_cache.find(api_key_hash(raw))
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


MAX_TAGS = 10
MAX_TAG_CHARS = 64
MAX_END_USER_CHARS = 256


# The fields of the three wire formats that cap a response's output (Chat Completions has two).
OUTPUT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def same_wire_body(body: dict, deployment: Deployment, **changes: object) -> dict:
    """The client's body for an upstream of its own wire format: its model swapped for the
    deployment's (and any `changes`), its output cap within the route's output limit (the same
    `CodecOptions.clamp_max_tokens` a translated request gets), and without the gateway's own
    `metadata.tags` (see `attribution`), which neither OpenAI's nor Anthropic's `metadata`
    accepts."""
    out = {**body, "model": deployment.upstream_model, **changes}
    for name in OUTPUT_LIMIT_FIELDS:
        value = out.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = deployment.codec_options.clamp_max_tokens(value)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "tags" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "tags"}
        if rest:
            out["metadata"] = rest
        else:
            out.pop("metadata")
    return out


def attribution(request: HttpRequest, body: dict) -> dict[str, object]:
    """The request's tags and end user, for its ledger row (`Call.attributed`). Tags come from
    the `x-gateway-tags` header (comma-separated) and then the body's `metadata.tags` (a list
    of strings, or one comma-separated string): trimmed, lowercased, commas and control
    characters dropped, cut to 64 characters, duplicates and empties skipped, the first 10
    kept. The end user is OpenAI's `user` or, else, Anthropic's `metadata.user_id`, cut to 256
    characters. Never raises: what cannot be read is not attributed."""
    metadata = body.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    raw: list[object] = list(request.headers.get("x-gateway-tags", "").split(","))
    body_tags = metadata.get("tags")
    if isinstance(body_tags, str):
        raw.extend(body_tags.split(","))
    elif isinstance(body_tags, list):
        raw.extend(body_tags)
    tags: list[str] = []
    for tag in raw:
        if not isinstance(tag, str):
            continue
        tag = "".join(c for c in tag if c.isprintable() and c != ",").strip().lower()
        tag = tag[:MAX_TAG_CHARS].strip()
        if tag and tag not in tags:
            tags.append(tag)
        if len(tags) == MAX_TAGS:
            break
    user = body.get("user")
    if not isinstance(user, str) or not user:
        user = metadata.get("user_id")
    end_user = "".join(c for c in user if c.isprintable())[:MAX_END_USER_CHARS] \
        if isinstance(user, str) else ""
    return {"tags": tuple(tags), "end_user": end_user}
