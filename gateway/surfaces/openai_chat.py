"""POST /v1/chat/completions — OpenAI Chat Completions, JSON or SSE.

OpenAI-dialect upstreams are passed through: each chunk is parsed once (usage, model name) and
re-emitted as it arrives, never buffered. `stream_options.include_usage` is always requested
upstream so the ledger gets exact usage; the usage chunk reaches the client only if it asked.
Upstreams of other dialects (Anthropic) are reached through the IR: when a model has such a
deployment the body is parsed in full, and gateway/surfaces/translated.py builds their request
and maps their answer back to completions and chunks.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.adapters import adapter_for
from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.codecs import openai_chat as chat_codec
from gateway.errors import GatewayError, InvalidRequest, UpstreamFailed
from gateway.proxy import (ProxyCall, authenticate, call_begin, call_finish, call_serve,
                           read_json, resolve, stream_abandoned, upstream_failure)
from gateway.responses import json_response, openai_error, openai_error_body, sse_response
from gateway.streaming import sse_format
from gateway.surfaces.relay import StreamRelay, relay_stream
from gateway.surfaces.translated import (SurfaceSpec, respond, send_prepared,
                                         upstream_requests)
from gateway.tokens import chat_input_tokens, text_tokens
from providers.cache import snapshot_cache
from providers.selectors import Deployment, RoutingSnapshot
from usage.models import UsageSource, UsageStatus

SURFACE = "openai.chat"
DONE = b"data: [DONE]\n\n"
DIALECT = "openai_chat"

SPEC = SurfaceSpec(
    name=SURFACE,
    format_response=lambda resp, req, model, request_id: chat_codec.format_response(
        resp, model=model, request_id=request_id),
    encoder=lambda req, model, request_id: chat_codec.StreamEncoder(
        model=model, request_id=request_id, include_usage=req.include_usage),
    error=openai_error,
)


def validate_chat_body(body: dict) -> None:
    """The checks a passthrough needs; the upstream validates the rest. Raises InvalidRequest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{i}]` must be an object with a `role`",
                                 param=f"messages[{i}]")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"`{name}` must be a positive integer", param=name)


def upstream_chat_body(body: dict, deployment: Deployment, *, stream: bool) -> dict:
    out = dict(body)
    out["model"] = deployment.upstream_model
    if stream:
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return out


def requested_max_tokens(body: dict) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) else None


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponse:
    call = call_begin(request, surface=SURFACE)
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.key = authenticate(request, snapshot)
        deployments = resolve(snapshot, call.key, body.get("model"))
        validate_chat_body(body)
        foreign = any(adapter_for(d.kind).dialect != DIALECT for d in deployments)
        req = chat_codec.parse_request(body) if foreign else None
    except GatewayError as exc:
        return openai_error(exc)
    call.public_model = body["model"]
    call.stream = bool(body.get("stream"))
    prompt_tokens = chat_input_tokens(body["messages"], tools=body.get("tools"))
    max_tokens = requested_max_tokens(body)
    if max_tokens is None and call.key.max_tokens_default:
        max_tokens = body["max_tokens"] = call.key.max_tokens_default
    translated = {}
    if req is not None:
        req = replace(req, max_tokens=max_tokens)
        try:
            translated = upstream_requests(req, deployments, stream=call.stream,
                                           native_dialect=DIALECT)
        except GatewayError as exc:
            return openai_error(exc)
    async def send(deployment: Deployment) -> UpstreamResponse:
        if deployment.route_id in translated:
            return await send_prepared(deployment, translated[deployment.route_id],
                                       stream=call.stream, request_id=call.request_id)
        return await adapter_for(deployment.kind).send(
            deployment=deployment, path="/chat/completions",
            body=upstream_chat_body(body, deployment, stream=call.stream),
            stream=call.stream, request_id=call.request_id)

    async def answer(upstream: UpstreamResponse) -> HttpResponse:
        headers = {"x-gateway-provider": call.deployment.provider_name}
        if upstream.dialect != DIALECT:
            return await respond(call, snapshot, upstream, spec=SPEC, req=req, headers=headers)
        if not call.stream:
            return await complete_native(call, snapshot, upstream, headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(relay_native(call, snapshot, upstream, include_usage=include_usage,
                                         headers=headers),
                            headers=headers,
                            on_abandoned=lambda stream: stream_abandoned(call, stream))

    return await call_serve(call, snapshot, deployments, request=request,
                            prompt_tokens=prompt_tokens, max_tokens=max_tokens, send=send,
                            respond=answer, error=openai_error)


async def complete_native(call: ProxyCall, snapshot: RoutingSnapshot, upstream: UpstreamResponse,
                          headers: dict[str, str]) -> HttpResponse:
    """Read an OpenAI-dialect JSON answer and relay it; a failure to read one (or an error
    body under 200) is a 502/504 billed at nothing, since no completion was produced."""
    error = None
    try:
        data = await upstream.json()
    except UpstreamError as exc:
        error = upstream_failure(call, exc)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = upstream_failure(call, UpstreamError(
            "upstream connection failed while reading the response",
            timeout=isinstance(exc, asyncio.TimeoutError), error_class=type(exc).__name__))
    finally:
        await upstream.close()
    if error is None and isinstance(data.get("error"), dict) and not data.get("choices"):
        call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=502, error_type="error_body")
        error = UpstreamFailed("the upstream returned an error instead of a completion")
    if error is not None:
        call.input_tokens = 0
        await call_finish(call, snapshot, upstream_broke=True)
        return openai_error(error)
    call.take_openai_usage(data.get("usage"))
    if call.usage_source == UsageSource.ESTIMATED:
        call.output_tokens = text_tokens(_choices_text(data.get("choices")))
    call.mark_first_token()
    data["model"] = call.public_model
    payload = orjson.dumps(data)
    await call_finish(call, snapshot, response_body=payload,
                      response_headers={**headers, "content-type": "application/json"})
    return json_response(data, headers=headers)


def _choices_text(choices: object) -> str:
    parts = []
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            parts.append(choice["text"])  # legacy completions
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            parts.append(message.get("content") or "")
            for tool_call in message.get("tool_calls") or ():
                parts.append(orjson.dumps(tool_call.get("function", {})).decode())
    return "".join(p for p in parts if isinstance(p, str))


def _delta_text(choices: list) -> str:
    parts = []
    for choice in choices:
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            parts.append(choice["text"])  # legacy completions
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for name in ("content", "reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str):
                parts.append(delta[name])
        for tool_call in delta.get("tool_calls") or ():
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(function, dict):
                parts.append(function.get("name") or "")
                parts.append(function.get("arguments") or "")
    return "".join(parts)


class ChunkRelay(StreamRelay):
    """The native pair (OpenAI-dialect upstream, OpenAI client): each chunk passes through with
    the public model name, and the usage chunk only when the client asked for it; driven by
    `relay_stream` like every other pair."""

    def __init__(self, call: ProxyCall, *, include_usage: bool) -> None:
        super().__init__(call)
        self.include_usage = include_usage

    def feed(self, event: str | None, data: str) -> list[bytes]:
        """Raises UpstreamError for garbage or an in-stream error."""
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream sent an event that is not JSON",
                                error_class="bad_stream") from None
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error") is not None and not chunk.get("choices"):
            raise UpstreamError("the upstream reported an error mid-stream", error_class="stream_error")
        if chunk.get("usage"):
            self.call.take_openai_usage(chunk["usage"])
        choices = chunk.get("choices")
        if choices:
            text = _delta_text(choices)
            if text:
                self.streamed.append(text)
                self.call.mark_first_token()
        elif not self.include_usage:
            return []
        if not self.include_usage:
            chunk.pop("usage", None)
        chunk["model"] = self.call.public_model
        return [sse_format(orjson.dumps(chunk))]

    def end(self) -> list[bytes]:
        return [DONE]

    def error(self, message: str, type: str) -> list[bytes]:
        error = UpstreamFailed(message, code="upstream_timeout" if type == "timeout_error"
                               else "upstream_error")
        return [sse_format(orjson.dumps(openai_error_body(error))), DONE]

    def settle(self) -> None:
        if self.call.usage_source == UsageSource.ESTIMATED:
            self.call.output_tokens = text_tokens("".join(self.streamed))


def relay_native(call: ProxyCall, snapshot: RoutingSnapshot, upstream: UpstreamResponse, *,
                 include_usage: bool, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """Relay an OpenAI-dialect stream to an OpenAI client (see gateway.surfaces.relay)."""
    return relay_stream(call, snapshot, upstream, ChunkRelay(call, include_usage=include_usage),
                        headers=headers)
