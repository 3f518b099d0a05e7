"""The shared flow of OpenAI endpoints that only OpenAI-dialect upstreams serve (legacy
completions, embeddings): validate, admit, route with failover, relay natively, one ledger row.
Deployments of other dialects are skipped; a model served only by them is a 400."""
from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from gateway.adapters import adapter_for
from gateway.adapters.base import UpstreamResponse
from gateway.errors import GatewayError, InvalidRequest
from gateway.proxy import (authenticate, call_begin, call_serve, read_json, resolve,
                           stream_abandoned)
from gateway.responses import openai_error, sse_response
from gateway.surfaces.openai_chat import (complete_native, relay_native, requested_max_tokens,
                                          upstream_chat_body)
from providers.cache import snapshot_cache
from providers.selectors import Deployment

NATIVE = "openai_chat"


async def passthrough(request: HttpRequest, *, surface: str, path: str,
                      validate: Callable[[dict], None], prompt_tokens: Callable[[dict], int],
                      streamable: bool) -> HttpResponse:
    """Serve one OpenAI-shaped request by passing it to an OpenAI-dialect upstream."""
    call = call_begin(request, surface=surface)
    try:
        body = read_json(request)
        snapshot = await snapshot_cache.get()
        call.key = authenticate(request, snapshot)
        deployments = tuple(d for d in resolve(snapshot, call.key, body.get("model"))
                            if adapter_for(d.kind).dialect == NATIVE)
        if not deployments:
            raise InvalidRequest(f"`{body['model']}` is not served by an OpenAI-compatible provider, "
                                 f"which {path} needs", param="model")
        validate(body)
        if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
            raise InvalidRequest("`stream` must be a boolean", param="stream")
        if body.get("stream") and not streamable:
            raise InvalidRequest(f"{path} does not stream", param="stream")
    except GatewayError as exc:
        return openai_error(exc)
    call.public_model = body["model"]
    call.stream = bool(body.get("stream"))
    estimate = prompt_tokens(body)
    max_tokens = requested_max_tokens(body) if streamable else 0
    if streamable and max_tokens is None and call.key.max_tokens_default:
        max_tokens = body["max_tokens"] = call.key.max_tokens_default
    async def send(deployment: Deployment) -> UpstreamResponse:
        return await adapter_for(deployment.kind).send(
            deployment=deployment, path=path,
            body=upstream_chat_body(body, deployment, stream=call.stream), stream=call.stream,
            request_id=call.request_id)

    async def answer(upstream: UpstreamResponse) -> HttpResponse:
        headers = {"x-gateway-provider": call.deployment.provider_name}
        if not call.stream:
            return await complete_native(call, snapshot, upstream, headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return sse_response(relay_native(call, snapshot, upstream, include_usage=include_usage,
                                         headers=headers),
                            headers=headers,
                            on_abandoned=lambda stream: stream_abandoned(call, stream))

    return await call_serve(call, snapshot, deployments, request=request, prompt_tokens=estimate,
                            max_tokens=max_tokens, send=send, respond=answer, error=openai_error)
