"""POST /v1/embeddings — OpenAI embeddings (never streamed).

OpenAI-compatible upstreams get the client's body passed through. Kinds that embed in their
own wire format (Gemini, Vertex AI, Bedrock's Titan and Cohere models: their record's
`embeddings` codec, gateway.dialects) get it translated by their transport
(gateway.adapters.embeddings); what they cannot take (token arrays, a size Titan v1 does not
have) is a 400 here, before admission. An answer without `usage` (an upstream that counts no
tokens) gets the gateway's estimate, which the ledger row bills and marks estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.call import Call
from gateway.codecs.embeddings_native import embeddings_request
from gateway.dialects import Dialect, dialect_for
from gateway.errors import InvalidRequest
from gateway.pipeline import Job, Surface, serve
from gateway.surfaces.openai_passthrough import OUTPUT, passthrough_surface
from gateway.surfaces.output import ApiOutput
from gateway.tokens import text_tokens
from gateway.types import ChatResponse
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot


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


_PASSTHROUGH = passthrough_surface(
    name="openai.embeddings", operation="embeddings", validate=_validate,
    prompt_tokens=lambda body: sum(text_tokens(t) for t in _inputs(body)), streamable=False)


def _prepare(body: dict[str, Any], key: KeyInfo, snapshot: RoutingSnapshot,
             deployments: tuple[Deployment, ...]) -> Job:
    job = _PASSTHROUGH.prepare(body, key, snapshot, deployments)
    for d in deployments:
        if (codec := dialect_for(d.kind).embeddings) is not None:
            codec.build(embeddings_request(body, d.upstream_model))  # raises InvalidRequest
    return job


@dataclass(frozen=True, slots=True)
class EmbeddingsOutput(ApiOutput):
    """The passthrough output, with the billed estimate as `usage` when the answer has none."""

    def body(self, call: Call, job: Job, dialect: Dialect, data: dict[str, Any],
             resp: ChatResponse | None) -> tuple[int, dict[str, Any]]:
        status, out = ApiOutput.body(self, call, job, dialect, data, resp)
        if not isinstance(out.get("usage"), dict):
            out["usage"] = {"prompt_tokens": call.input_tokens, "total_tokens": call.input_tokens}
        return status, out


SURFACE = Surface(name=_PASSTHROUGH.name, operation=_PASSTHROUGH.operation, prepare=_prepare,
                  output=EmbeddingsOutput(error=OUTPUT.error, wire=OUTPUT.wire,
                                          passthrough=OUTPUT.passthrough))


@csrf_exempt
@require_POST
async def embeddings(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)
