"""POST /v1/responses — the OpenAI Responses API, JSON or SSE, served by any upstream.

No upstream speaks this dialect: the request is parsed into the IR and sent as Chat
Completions to OpenAI-compatible (and mock) upstreams, as Messages to Anthropic ones
(gateway/surfaces/translated.py); the answer comes back as a `response` object, or as
`response.created` … `response.completed` events whose final response carries the usage. The
gateway stores nothing, so `previous_response_id` and stored prompts are refused (400): send
the whole conversation in `input`. Errors use OpenAI's shape; a failure mid-stream is an
`error` event followed by `response.failed`.
"""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.codecs import openai_responses as codec
from gateway.responses import openai_error
from gateway.surfaces.translated import SurfaceSpec, serve

SURFACE = "openai.responses"

SPEC = SurfaceSpec(
    name=SURFACE,
    format_response=lambda resp, req, model, request_id: codec.format_response(
        resp, model=model, request_id=request_id, request=req),
    encoder=lambda req, model, request_id: codec.StreamEncoder(
        model=model, request_id=request_id, request=req),
    error=openai_error,
)


@csrf_exempt
@require_POST
async def responses(request: HttpRequest) -> HttpResponse:
    return await serve(request, spec=SPEC, parse=codec.parse_request)
