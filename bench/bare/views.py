"""One async view that forwards a POST body to the upstream and returns its answer, through one
shared client of the kind settings.BENCH_PROXY_CLIENT names. Also the URLconf."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

_HEADERS = {"content-type": "application/json"}


class _Forwarder:
    """The one shared client of this process, created on first use (inside the event loop)."""

    def __init__(self) -> None:
        self._client = None

    async def post(self, body: bytes) -> tuple[int, bytes, str]:
        kind = settings.BENCH_PROXY_CLIENT
        if self._client is None:
            self._client = self._make(kind)
        if kind == "aiohttp":
            async with self._client.post(settings.BENCH_UPSTREAM_URL, data=body,
                                         headers=_HEADERS) as response:
                return (response.status, await response.read(),
                        response.headers.get("content-type", "application/json"))
        response = await self._client.post(settings.BENCH_UPSTREAM_URL, content=body,
                                           headers=_HEADERS)
        return response.status_code, response.content, response.headers.get("content-type", "")

    @staticmethod
    def _make(kind: str):
        if kind == "aiohttp":
            import aiohttp

            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60))
        import httpx

        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        if kind == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=60)
        if kind == "httpx":
            return httpx.AsyncClient(limits=limits, timeout=60)
        raise ValueError(f"unknown BENCH_PROXY_CLIENT {kind!r}")


_forwarder = _Forwarder()


@csrf_exempt
async def proxy(request: HttpRequest) -> HttpResponse:
    status, body, content_type = await _forwarder.post(request.body)
    return HttpResponse(body, status=status, content_type=content_type)


async def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")


urlpatterns = [
    path("v1/chat/completions", proxy),
    path("health", health),
]
