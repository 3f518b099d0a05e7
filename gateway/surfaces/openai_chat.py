"""POST /v1/chat/completions — OpenAI Chat Completions, JSON or SSE.

OpenAI-compatible upstreams get the client's body with only `model` swapped (and
`stream_options.include_usage` always asked for, so the ledger gets exact usage; the usage
chunk reaches the client only if it asked); their answer is passed through. Upstreams of other
wire formats are reached through the IR: when a model has such a deployment the body is parsed
in full and each gets a body built by its codec.
"""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.codecs import openai_chat as codec
from gateway.dialects import dialect_for
from gateway.errors import InvalidRequest
from gateway.intake import same_wire_body
from gateway.pipeline import Job, Surface, serve, translated_bodies
from gateway.responses import openai_error
from gateway.surfaces.output import ApiOutput
from gateway.tokens import chat_input_tokens
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot

WIRE = "openai_chat"


def validate_chat_body(body: dict) -> None:
    """The checks a passthrough needs; the upstream validates the rest. Raises InvalidRequest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{i}]` must be an object with a `role`",
                                 param=f"messages[{i}]")
    validate_stream_fields(body)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"`{name}` must be a positive integer", param=name)


def validate_stream_fields(body: dict) -> None:
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")


def passthrough_body(body: dict, deployment: Deployment, *, stream: bool) -> dict:
    """The client's body for an OpenAI-compatible upstream: its model, and usage asked for."""
    out = same_wire_body(body, deployment)
    if stream:
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return out


def requested_max_tokens(body: dict) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) else None


def include_usage(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def prepare(body: dict[str, Any], key: KeyInfo, snapshot: RoutingSnapshot,
            deployments: tuple[Deployment, ...]) -> Job:
    validate_chat_body(body)
    stream = bool(body.get("stream"))
    max_tokens = requested_max_tokens(body)
    if max_tokens is None and key.max_tokens_default:
        max_tokens = body["max_tokens"] = key.max_tokens_default
    # The IR only when a deployment needs it: parsing costs more than passing through.
    foreign = any(dialect_for(d.kind).wire != WIRE for d in deployments)
    req = codec.parse_request(body) if foreign else None
    dropped: dict[int, tuple[str, ...]] = {}
    if req is not None:
        bodies, dropped = translated_bodies(
            req, deployments, stream=stream, native_wire=WIRE,
            native_body=lambda d: passthrough_body(body, d, stream=stream))
    else:
        bodies = {d.route_id: passthrough_body(body, d, stream=stream) for d in deployments}
    return Job(snapshot=snapshot, deployments=deployments, operation="chat", bodies=bodies,
               prompt_tokens=chat_input_tokens(body["messages"], tools=body.get("tools")),
               max_tokens=max_tokens, stream=stream, req=req,
               include_usage=include_usage(body), dropped=dropped)


OUTPUT = ApiOutput(
    error=openai_error, wire=WIRE,
    format_response=lambda resp, job, model, request_id: codec.format_response(
        resp, model=model, request_id=request_id),
    encoder=lambda job, model, request_id: codec.StreamEncoder(
        model=model, request_id=request_id, include_usage=job.req.include_usage),
    passthrough=lambda job, model: codec.Passthrough(model=model,
                                                     include_usage=job.include_usage),
)
SURFACE = Surface(name="openai.chat", operation="chat", prepare=prepare, output=OUTPUT)


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await serve(request, SURFACE)
