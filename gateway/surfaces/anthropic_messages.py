"""POST /v1/messages and /v1/messages/count_tokens — Anthropic Messages, JSON or SSE.

Every upstream kind serves it. Anthropic upstreams get the client's body with only `model`
swapped for the upstream's, and its `anthropic-beta` and `anthropic-version` headers (edited
by the provider's `anthropic_beta` setting); their answer is relayed as it comes (each event
parsed once, for usage and to show the public model name). Other kinds are reached through the
IR (gateway.pipeline.ir_prepare), what they cannot take named in `x-gateway-dropped`. The
request is always parsed into the IR first, so an invalid body is a 400 naming its field, in
Anthropic's words, whatever the upstream; what the client merely offers never is. Errors use
Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, mid-stream too (an
`error` event).
"""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.adapters import upstream_send
from gateway.adapters.base import UpstreamError
from gateway.codecs import anthropic_messages as codec
from gateway.dialects import dialect_for
from gateway.errors import GatewayError, InvalidRequest
from gateway.intake import authenticate, read_json, resolve, same_wire_body
from gateway.pipeline import Surface, forwarded_headers, ir_prepare, serve
from gateway.responses import anthropic_error, json_response
from gateway.surfaces.output import ApiOutput
from gateway.tokens import request_input_tokens
from gateway.types import ChatRequest
from providers.cache import snapshot_cache
from providers.selectors import Deployment

WIRE = "anthropic_messages"

OUTPUT = ApiOutput(
    error=anthropic_error, wire=WIRE,
    format_response=lambda resp, job, model, request_id: codec.format_response(
        resp, model=model, request_id=request_id),
    encoder=lambda job, model, request_id: codec.StreamEncoder(
        model=model, request_id=request_id, prompt_tokens=job.prompt_tokens),
    passthrough=lambda job, model: codec.Passthrough(model=model),
)
SURFACE = Surface(name="anthropic.messages", operation="chat",
                  prepare=ir_prepare(codec.parse_request, native_wire=WIRE), output=OUTPUT)


@csrf_exempt
@require_POST
async def messages(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)


@csrf_exempt
@require_POST
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """`{"input_tokens": N}`: the count of the first deployment (in priority order) whose
    kind counts (its record's `count_tokens` URL: Anthropic; Bedrock's CountTokens; Vertex's
    countTokens for Gemini and count-tokens for Claude) and answers, else the gateway's
    estimate. Anthropic's 4xx about the body is the client's answer (400); a translated
    kind's 4xx (a model that does not count, say) and other failures move on. No upstream
    charges for counting, so no ledger row is written."""
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        key = await authenticate(request, snapshot)
        deployments = resolve(snapshot, key, body.get("model"))
        req = codec.parse_request(body, require_max_tokens=False)
    except GatewayError as exc:
        return anthropic_error(exc)
    for deployment in sorted(deployments, key=lambda d: d.priority):
        if not dialect_for(deployment.kind).serves("count_tokens"):
            continue
        count = await _upstream_count(deployment, body, req, request_id=request.request_id,
                                      forwarded=forwarded_headers(request, WIRE))
        if isinstance(count, GatewayError):
            return anthropic_error(count)
        if count is not None:
            return json_response({"input_tokens": count},
                                 headers={"x-gateway-provider": deployment.provider_name})
    return json_response({"input_tokens": request_input_tokens(req)})


async def _upstream_count(deployment: Deployment, body: dict[str, Any], req: ChatRequest, *,
                          request_id: str, forwarded: dict[str, str]
                          ) -> int | GatewayError | None:
    """The upstream's count; a GatewayError to relay; None when this upstream cannot say."""
    dialect = dialect_for(deployment.kind)
    upstream = None
    try:
        upstream_body = same_wire_body(body, deployment)
        if dialect.count_body is not None:
            upstream_body = dialect.count_body(upstream_body, req, deployment.upstream_model,
                                               deployment.codec_options)
        upstream = await upstream_send(deployment, operation="count_tokens",
                                       body=upstream_body, stream=False,
                                       request_id=request_id, forwarded=forwarded)
        data = await upstream.json()
    except GatewayError:
        return None  # content this kind's codec does not take: the estimate answers
    except UpstreamError as exc:
        if dialect.count_body is None and exc.status is not None \
                and 400 <= exc.status < 500 and exc.status not in (401, 403, 404, 408, 429):
            return InvalidRequest(exc.message)
        return None
    finally:
        if upstream is not None:
            await upstream.close()
    count = data.get(dialect.count_field)
    return count if isinstance(count, int) and not isinstance(count, bool) else None
