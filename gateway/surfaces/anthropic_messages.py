"""POST /v1/messages and /v1/messages/count_tokens — Anthropic Messages, JSON or SSE.

Every upstream kind serves it. Anthropic upstreams get the client's body with only `model`
swapped for the upstream's, and their answer is relayed as it comes (each event parsed once,
for usage and to show the public model name); other kinds are reached through the IR
(gateway/surfaces/translated.py). The request is always parsed into the IR first, so an invalid
body is a 400 naming its field whatever the upstream. Errors use Anthropic's shape, `{"type":
"error", "error": {"type", "message"}}`, mid-stream too (an `error` event).
"""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from gateway.adapters import adapter_for
from gateway.adapters.base import UpstreamError, UpstreamResponse
from gateway.codecs import anthropic_messages as codec
from gateway.codecs.anthropic_messages_output import usage_from_anthropic
from gateway.errors import GatewayError, InvalidRequest
from gateway.proxy import ProxyCall, authenticate, call_finish, read_json, resolve
from gateway.responses import anthropic_error, json_response
from gateway.streaming import sse_format
from gateway.surfaces.relay import StreamRelay, call_take_usage, parse_event_data
from gateway.surfaces.translated import (SurfaceSpec, UpstreamRequest, json_bytes_response,
                                         output_tokens_estimate, send_prepared, serve,
                                         upstream_json)
from gateway.tokens import request_input_tokens
from providers.cache import snapshot_cache
from providers.selectors import Deployment, RoutingSnapshot

SURFACE = "anthropic.messages"
COUNT_PATH = "/messages/count_tokens"

SPEC = SurfaceSpec(
    name=SURFACE,
    format_response=lambda resp, req, model, request_id: codec.format_response(
        resp, model=model, request_id=request_id),
    encoder=lambda req, model, request_id: codec.StreamEncoder(model=model,
                                                               request_id=request_id),
    error=anthropic_error,
)


class NativeRelay(StreamRelay):
    """An Anthropic upstream's events, relayed as they are but for the model name in
    `message_start`; decoded into the IR only for the call's accounting."""

    def __init__(self, call: ProxyCall) -> None:
        super().__init__(call)
        self._decoder = codec.StreamDecoder()

    def feed(self, event: str | None, data: str) -> list[bytes]:
        payload = parse_event_data(data)
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type") or event
        self.observe(self._decoder.feed(event, payload))
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            payload["message"]["model"] = self.call.public_model
        elif kind == "message_stop":
            self.done = True
        return [sse_format(orjson.dumps(payload), event=event or kind)]

    def end(self) -> list[bytes]:
        if self.failed is None and not self.stopped:
            raise UpstreamError("the upstream stream ended before the response was complete",
                                error_class="stream_cut")
        return []

    def error(self, message: str, type: str) -> list[bytes]:
        return [sse_format(orjson.dumps({"type": "error", "error": {
            "type": codec.error_type(type), "message": message}}), event="error")]


class Native:
    """Anthropic upstreams: the client's own body, its own answer."""
    dialect = "anthropic_messages"

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def body(self, deployment: Deployment) -> dict[str, Any]:
        return {**self._body, "model": deployment.upstream_model}

    async def complete(self, call: ProxyCall, snapshot: RoutingSnapshot,
                       upstream: UpstreamResponse, headers: dict[str, str]) -> HttpResponse:
        try:
            data = await upstream_json(call, upstream)
        except GatewayError as exc:
            await call_finish(call, snapshot, upstream_broke=True)
            return anthropic_error(exc)
        usage = data.get("usage")
        if isinstance(usage, dict):
            call_take_usage(call, usage_from_anthropic(usage))
        elif isinstance(data.get("content"), list):
            call.output_tokens = output_tokens_estimate(codec.parse_response(data))
        call.mark_first_token()
        data["model"] = call.public_model
        payload = orjson.dumps(data)
        await call_finish(call, snapshot, response_body=payload,
                          response_headers={**headers, "content-type": "application/json"})
        return json_bytes_response(payload, headers=headers)

    def relay(self, call: ProxyCall) -> StreamRelay:
        return NativeRelay(call)


@csrf_exempt
@require_POST
async def messages(request: HttpRequest) -> HttpResponse:
    return await serve(request, spec=SPEC, parse=codec.parse_request, native=Native)


@csrf_exempt
@require_POST
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """`{"input_tokens": N}`: the count of the first Anthropic deployment (in priority order)
    that answers, else the gateway's estimate. An upstream's 4xx about the body is the
    client's answer (400); other failures move on. No upstream charges for counting, so no
    ledger row is written."""
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        key = authenticate(request, snapshot)
        deployments = resolve(snapshot, key, body.get("model"))
        req = codec.parse_request(body, require_max_tokens=False)
    except GatewayError as exc:
        return anthropic_error(exc)
    for deployment in sorted(deployments, key=lambda d: d.priority):
        if adapter_for(deployment.kind).dialect != "anthropic_messages":
            continue
        count = await _upstream_count(deployment, body, request_id=request.request_id)
        if isinstance(count, GatewayError):
            return anthropic_error(count)
        if count is not None:
            return json_response({"input_tokens": count},
                                 headers={"x-gateway-provider": deployment.provider_name})
    return json_response({"input_tokens": request_input_tokens(req)})


async def _upstream_count(deployment: Deployment, body: dict[str, Any], *,
                          request_id: str) -> int | GatewayError | None:
    """The upstream's count; a GatewayError to relay; None when this upstream cannot say."""
    upstream = None
    try:
        upstream = await send_prepared(
            deployment, UpstreamRequest(COUNT_PATH, {**body, "model": deployment.upstream_model}),
            stream=False, request_id=request_id)
        data = await upstream.json()
    except UpstreamError as exc:
        if exc.status is not None and 400 <= exc.status < 500 \
                and exc.status not in (401, 403, 404, 408, 429):
            return InvalidRequest(exc.message)
        return None
    except (aiohttp.ClientError, TimeoutError):
        return None
    finally:
        if upstream is not None:
            await upstream.close()
    count = data.get("input_tokens")
    return count if isinstance(count, int) and not isinstance(count, bool) else None
