"""HTTP responses the proxy sends: JSON via orjson, SSE streams, and each surface's error shape."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from django.http import HttpResponse, StreamingHttpResponse
from django.views import defaults

from gateway.errors import GatewayError, InternalError, InvalidRequest, RouteNotFound
from gateway.streaming import drainer

# Anthropic's error type names for our statuses.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
    422: "invalid_request_error", 429: "rate_limit_error", 502: "api_error",
    503: "overloaded_error", 504: "timeout_error",
}


def json_response(data: object, *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class ProxyStreamingResponse(StreamingHttpResponse):
    """A stream that knows whether the server started consuming it. If the client leaves after
    the view returned but before the first byte (Django then only closes the response), the
    `on_abandoned` coroutine function is run in the background with the unstarted stream."""

    def __init__(self, stream: AsyncIterator[bytes], *, on_abandoned=None, **kwargs) -> None:
        super().__init__(stream, **kwargs)
        self._proxy_stream = stream
        self._consumed = False
        self._on_abandoned = on_abandoned
        self._loop = asyncio.get_running_loop() if on_abandoned else None

    async def __aiter__(self):
        # Our own iteration instead of Django's two wrapper generators, which do not close the
        # stream they wrap: when the server stops early (a client gone or stalled mid-send) the
        # relay must be closed now, so it records its ledger row, not whenever the garbage
        # collector gets to it. The parts are bytes already.
        self._consumed = True
        try:
            async for part in self._proxy_stream:
                yield part
        finally:
            await self._proxy_stream.aclose()

    def close(self) -> None:
        super().close()
        if not self._consumed and self._on_abandoned is not None:
            on_abandoned, self._on_abandoned = self._on_abandoned, None
            self._loop.call_soon_threadsafe(drainer.start, lambda: on_abandoned(self._proxy_stream))


def sse_response(stream: AsyncIterator[bytes], *, headers: dict[str, str] | None = None,
                 on_abandoned=None) -> StreamingHttpResponse:
    response = ProxyStreamingResponse(stream, on_abandoned=on_abandoned,
                                      content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def openai_error_body(exc: GatewayError) -> dict:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def openai_error(exc: GatewayError) -> HttpResponse:
    return json_response(openai_error_body(exc), status=exc.status, headers=exc.headers)


def anthropic_error_body(exc: GatewayError) -> dict:
    return {"type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(exc.status, "api_error"), "message": exc.message}}


def anthropic_error(exc: GatewayError) -> HttpResponse:
    return json_response(anthropic_error_body(exc), status=exc.status, headers=exc.headers)


def replayed(replay) -> HttpResponse:
    """The stored first response to an Idempotency-Key, byte for byte."""
    response = HttpResponse(replay.body, status=replay.status,
                            content_type=replay.headers.get("content-type", "application/json"))
    for name, value in replay.headers.items():
        if name != "content-type":
            response[name] = value
    response["idempotent-replayed"] = "true"
    return response


def _api_error(request, error: GatewayError) -> HttpResponse:
    return anthropic_error(error) if request.path.startswith("/v1/messages") else openai_error(error)


def _is_api(request) -> bool:
    return request.path.startswith(("/v1/", "/api/"))


def bad_request(request, exception):
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    return _api_error(request, InvalidRequest("bad request"))


def not_found(request, exception):
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return _api_error(request, RouteNotFound(f"no such endpoint: {request.method} {request.path[:200]}"))


def server_error(request):
    if not _is_api(request):
        return defaults.server_error(request)
    return _api_error(request, InternalError("internal error; the x-request-id header identifies it in the logs"))
