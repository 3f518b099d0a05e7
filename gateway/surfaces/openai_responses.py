"""POST /v1/responses — the OpenAI Responses API, JSON or SSE, served by any upstream.

The request is parsed into the IR and sent as Chat Completions to OpenAI-compatible (and mock)
upstreams, as Messages to Anthropic ones; the answer comes back as a `response` object, or as
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
from gateway.pipeline import Surface, ir_prepare, serve
from gateway.responses import openai_error
from gateway.surfaces.output import ApiOutput

OUTPUT = ApiOutput(
    error=openai_error,
    format_response=lambda resp, job, model, request_id: codec.format_response(
        resp, model=model, request_id=request_id, request=job.req),
    encoder=lambda job, model, request_id: codec.StreamEncoder(
        model=model, request_id=request_id, request=job.req),
)
SURFACE = Surface(name="openai.responses", operation="chat",
                  prepare=ir_prepare(codec.parse_request), output=OUTPUT)


@csrf_exempt
@require_POST
async def responses(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)
