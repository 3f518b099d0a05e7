"""GET /v1/models and /v1/models/<id> — the public models the calling key may use.

OpenAI's list shape by default (`{"object": "list", "data": [{"id", "object": "model",
"created", "owned_by": "gateway"}]}`); Anthropic's when the request carries an
`anthropic-version` header, as the anthropic SDK's always does (`{"data": [{"type": "model",
"id", "display_name", "created_at"}], "has_more", "first_id", "last_id"}`, paged with `limit`
(default 20, at most 1000), `after_id` and `before_id`). Errors follow the same choice of shape.
The gateway does not track when a public model was created, so `created` is 0 (the epoch).
"""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.intake import authenticate
from gateway.responses import anthropic_error, json_response, openai_error
from providers.cache import snapshot_cache

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def _anthropic(request: HttpRequest) -> bool:
    return "anthropic-version" in request.headers


async def _visible_models(request: HttpRequest) -> list[str]:
    """Public model names the key may use, sorted. Raises AuthenticationFailed."""
    snapshot = await snapshot_cache.get()
    key = await authenticate(request, snapshot)
    return [m for m in snapshot.public_models() if key.may_use(m)]


def _openai_model(model: str) -> dict:
    return {"id": model, "object": "model", "created": 0, "owned_by": "gateway"}


def _anthropic_model(model: str) -> dict:
    return {"type": "model", "id": model, "display_name": model, "created_at": EPOCH}


def _anthropic_page(models: list[str], params) -> dict:
    """One page of Anthropic's list: `limit` items after `after_id` or before `before_id`.
    Raises InvalidRequest for a bad `limit`."""
    raw = params.get("limit")
    if raw is None:
        limit = DEFAULT_LIMIT
    elif raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT:
        limit = int(raw)
    else:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}", param="limit")
    after, before = params.get("after_id"), params.get("before_id")
    if before:
        end = models.index(before) if before in models else len(models)
        page = models[max(0, end - limit):end]
        has_more = end - limit > 0
    else:
        start = models.index(after) + 1 if after in models else 0
        page = models[start:start + limit]
        has_more = start + limit < len(models)
    return {"data": [_anthropic_model(m) for m in page], "has_more": has_more,
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}


@require_GET
async def models_list(request: HttpRequest) -> HttpResponse:
    anthropic = _anthropic(request)
    try:
        models = await _visible_models(request)
        if anthropic:
            return json_response(_anthropic_page(models, request.GET))
    except GatewayError as exc:
        return anthropic_error(exc) if anthropic else openai_error(exc)
    return json_response({"object": "list", "data": [_openai_model(m) for m in models]})


@require_GET
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    anthropic = _anthropic(request)
    try:
        if model not in await _visible_models(request):
            raise NotFound(f"the model `{model[:200]}` does not exist", param="model")
    except GatewayError as exc:
        return anthropic_error(exc) if anthropic else openai_error(exc)
    return json_response(_anthropic_model(model) if anthropic else _openai_model(model))
