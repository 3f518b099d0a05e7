"""The shared path of the surfaces: a client request in the typed IR reaches any upstream kind.

When the client's dialect (its surface) differs from the upstream's (its adapter's `dialect`),
the request is built in the upstream's dialect from the IR (`upstream_requests`, before any
upstream call, so content a deployment refuses is a 400), and the answer is mapped back: a
body through the upstream codec's `parse_response` and the surface's `format_response`, a
stream through `TranslatedRelay` (StreamDecoder -> IR events -> the surface's StreamEncoder).
Usage lands on the ProxyCall from the IR (`Usage`: input including cached, output, cached,
reasoning), or is estimated when the upstream reports none.

`serve` is the whole request for a surface built on this (validation, admission, routing,
response); a surface passes a `NativePath` factory for upstreams of its own dialect, which are
then relayed with minimal changes instead of translated. Deployments of one public model may mix
kinds: each gets a body in its own dialect, and failover may cross dialects.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol

import aiohttp
import orjson
from django.http import HttpRequest, HttpResponse

from gateway.adapters import adapter_for
from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.codecs import anthropic_messages, openai_chat
from gateway.errors import GatewayError, UpstreamFailed
from gateway.proxy import (ProxyCall, authenticate, call_begin, call_finish, call_serve,
                           read_json, resolve, stream_abandoned, upstream_failure)
from gateway.responses import sse_response
from gateway.surfaces.relay import StreamRelay, TranslatedRelay, call_take_usage, relay_stream
from gateway.tokens import request_input_tokens, text_tokens
from gateway.types import (ChatRequest, ChatResponse, CodecOptions, TextPart, ThinkingPart,
                           ToolCallPart)
from providers.cache import snapshot_cache
from providers.selectors import Deployment, RoutingSnapshot
from usage.models import UsageStatus

# The upstream dialects, each with its codec and the path its adapter posts to.
UPSTREAM_CODECS: dict[str, ModuleType] = {
    "openai_chat": openai_chat,
    "anthropic_messages": anthropic_messages,
}
UPSTREAM_PATHS: dict[str, str] = {
    "openai_chat": "/chat/completions",
    "anthropic_messages": "/messages",
}


@dataclass(frozen=True, slots=True)
class SurfaceSpec:
    """What a client surface contributes: its ledger name, and how it writes a whole response
    (from the IR response and request, public model, request id), a stream encoder (from the
    request, public model, request id), and an error response."""
    name: str
    format_response: Callable[[ChatResponse, ChatRequest, str, str], dict[str, Any]]
    encoder: Callable[[ChatRequest, str, str], Any]  # (request, model, request_id) -> encoder
    error: Callable[[GatewayError], HttpResponse]


class NativePath(Protocol):
    """How a surface serves upstreams of its own dialect without translating."""
    dialect: str

    def body(self, deployment: Deployment) -> dict[str, Any]: ...

    async def complete(self, call: ProxyCall, snapshot: RoutingSnapshot,
                       upstream: UpstreamResponse, headers: dict[str, str]) -> HttpResponse: ...

    def relay(self, call: ProxyCall) -> StreamRelay: ...


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    path: str
    body: dict[str, Any]


def codec_options_for(deployment: Deployment) -> CodecOptions:
    """Building knobs per deployment, from its provider's `translation` settings
    (providers.translation): by default Anthropic takes documents (PDFs, text files) natively
    and OpenAI-compatible servers refuse them with a 400; images are allowed."""
    return deployment.codec_options


def upstream_requests(req: ChatRequest, deployments: tuple[Deployment, ...], *, stream: bool,
                      native: NativePath | None = None,
                      native_dialect: str | None = None) -> dict[int, UpstreamRequest]:
    """route id -> the body for each deployment, in its adapter's dialect: `native.body` for
    the surface's own dialect (`native_dialect` names one whose bodies the caller builds
    itself; those are left out), the IR built by the upstream codec for the others. Raises
    InvalidRequest when the request carries content a deployment does not accept."""
    native_dialect = native.dialect if native is not None else native_dialect
    prepared: dict[int, UpstreamRequest] = {}
    for d in deployments:
        dialect = adapter_for(d.kind).dialect
        if dialect == native_dialect:
            if native is not None:
                prepared[d.route_id] = UpstreamRequest(UPSTREAM_PATHS[dialect], native.body(d))
            continue
        body = UPSTREAM_CODECS[dialect].build_request(req, upstream_model=d.upstream_model,
                                                      stream=stream,
                                                      options=codec_options_for(d))
        prepared[d.route_id] = UpstreamRequest(UPSTREAM_PATHS[dialect], body)
    return prepared


async def send_prepared(deployment: Deployment, prepared: UpstreamRequest, *, stream: bool,
                        request_id: str) -> UpstreamResponse:
    return await adapter_for(deployment.kind).send(deployment=deployment, path=prepared.path,
                                                   body=prepared.body, stream=stream,
                                                   request_id=request_id)


def _is_error_body(dialect: str, data: dict[str, Any]) -> bool:
    """Some upstreams answer 200 with an error instead of a completion."""
    if dialect == "anthropic_messages":
        return data.get("type") == "error"
    return isinstance(data.get("error"), dict) and not data.get("choices")


async def upstream_json(call: ProxyCall, upstream: UpstreamResponse) -> dict[str, Any]:
    """The upstream's whole (non-streamed) body, and the upstream released. Raises the
    GatewayError the client sees, with the failure recorded on the call."""
    try:
        data = await upstream.json()
    except UpstreamError as exc:
        raise upstream_failure(call, exc) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise upstream_failure(call, UpstreamError(
            "upstream connection failed while reading the response",
            timeout=isinstance(exc, asyncio.TimeoutError),
            error_class=type(exc).__name__)) from None
    finally:
        await upstream.close()
    if _is_error_body(upstream.dialect, data):
        call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=502, error_type="error_body")
        raise UpstreamFailed("the upstream returned an error instead of a completion")
    return data


def output_tokens_estimate(resp: ChatResponse) -> int:
    """What a response's content is likely to have cost, for upstreams that report no usage."""
    parts = []
    for part in resp.content:
        if isinstance(part, (TextPart, ThinkingPart)):
            parts.append(part.text)
        elif isinstance(part, ToolCallPart):
            parts.append(part.name + part.arguments)
    return text_tokens("".join(parts))


async def complete_translated(call: ProxyCall, snapshot: RoutingSnapshot,
                              upstream: UpstreamResponse, *, spec: SurfaceSpec, req: ChatRequest,
                              headers: dict[str, str]) -> HttpResponse:
    """A non-streamed upstream answer in another dialect, as the surface's response body."""
    try:
        data = await upstream_json(call, upstream)
        resp = UPSTREAM_CODECS[upstream.dialect].parse_response(data)
    except GatewayError as exc:
        if call.status == UsageStatus.OK:
            call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=exc.status,
                      error_type="bad_response")
        await call_finish(call, snapshot, upstream_broke=True)
        return spec.error(exc)
    if isinstance(data.get("usage"), dict):
        call_take_usage(call, resp.usage)
    else:
        call.output_tokens = output_tokens_estimate(resp)
    call.mark_first_token()
    payload = orjson.dumps(spec.format_response(resp, req, call.public_model, call.request_id))
    await call_finish(call, snapshot, response_body=payload,
                      response_headers={**headers, "content-type": "application/json"})
    return json_bytes_response(payload, headers=headers)


def json_bytes_response(payload: bytes, *, headers: dict[str, str]) -> HttpResponse:
    response = HttpResponse(payload, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response


async def respond(call: ProxyCall, snapshot: RoutingSnapshot, upstream: UpstreamResponse, *,
                  spec: SurfaceSpec, req: ChatRequest, native: NativePath | None = None,
                  headers: dict[str, str]) -> HttpResponse:
    """The client's response for an opened upstream: native when its dialect is the surface's
    (and a NativePath is given), translated otherwise; JSON or SSE as the call asked."""
    if native is not None and upstream.dialect == native.dialect:
        if not call.stream:
            return await native.complete(call, snapshot, upstream, headers)
        relay = native.relay(call)
    else:
        if not call.stream:
            return await complete_translated(call, snapshot, upstream, spec=spec, req=req,
                                             headers=headers)
        relay = TranslatedRelay(call, decoder=UPSTREAM_CODECS[upstream.dialect].StreamDecoder(),
                                encoder=spec.encoder(req, call.public_model, call.request_id))
    return sse_response(relay_stream(call, snapshot, upstream, relay, headers=headers),
                        on_abandoned=lambda stream: stream_abandoned(call, stream),
                        headers=headers)


async def serve(request: HttpRequest, *, spec: SurfaceSpec,
                parse: Callable[[dict[str, Any]], ChatRequest],
                native: Callable[[dict[str, Any]], NativePath] | None = None) -> HttpResponse:
    """One request of a surface, start to end: body, key and model (401/404/403 before the
    body's own 400s), `parse` into the IR, admission (idempotency, limits, budget), routing
    with failover, then the response. `native`, given the client's body, serves upstreams of
    the surface's own dialect. Errors are in the surface's shape; exactly one ledger row for
    every request that got past authentication and validation."""
    call = call_begin(request, surface=spec.name)
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.key = authenticate(request, snapshot)
        deployments = resolve(snapshot, call.key, body.get("model"))
        req = parse(body)
        if req.max_tokens is None and call.key.max_tokens_default:
            req = replace(req, max_tokens=call.key.max_tokens_default)
        native_path = native(body) if native is not None else None
        prepared = upstream_requests(req, deployments, stream=req.stream, native=native_path)
    except GatewayError as exc:
        return spec.error(exc)
    call.public_model = req.model
    call.stream = req.stream
    prompt_tokens = request_input_tokens(req)
    async def send(deployment: Deployment) -> UpstreamResponse:
        return await send_prepared(deployment, prepared[deployment.route_id], stream=call.stream,
                                   request_id=call.request_id)

    async def answer(upstream: UpstreamResponse) -> HttpResponse:
        headers = {"x-gateway-provider": call.deployment.provider_name}
        return await respond(call, snapshot, upstream, spec=spec, req=req, native=native_path,
                             headers=headers)

    return await call_serve(call, snapshot, deployments, request=request,
                            prompt_tokens=prompt_tokens, max_tokens=req.max_tokens, send=send,
                            respond=answer, error=spec.error)
