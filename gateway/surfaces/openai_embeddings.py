"""POST /v1/embeddings — OpenAI embeddings (never streamed), OpenAI-dialect upstreams."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.errors import InvalidRequest
from gateway.pipeline import serve
from gateway.surfaces.openai_passthrough import passthrough_surface
from gateway.tokens import text_tokens


def _inputs(body: dict) -> list[str]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
        return [" " * 4 * (len(v) if isinstance(v, list) else 1) for v in value]
    raise InvalidRequest("`input` must be a non-empty string, array of strings or token arrays",
                         param="input")


def _validate(body: dict) -> None:
    _inputs(body)
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidRequest("`dimensions` must be a positive integer", param="dimensions")


SURFACE = passthrough_surface(
    name="openai.embeddings", operation="embeddings", validate=_validate,
    prompt_tokens=lambda body: sum(text_tokens(t) for t in _inputs(body)), streamable=False)


@csrf_exempt
@require_POST
async def embeddings(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)
