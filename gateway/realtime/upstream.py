"""The upstream end of a realtime session: a WebSocket on the shared aiohttp session.

The URL is the kind's `realtime` path under the provider's base URL (gateway.dialects), the
scheme swapped to ws(s), with `?model=<upstream model>`; the headers are the record's (fixed
headers, the provider's extra headers, the credentials) plus the client's `OpenAI-Beta`,
which selects the protocol version the client speaks. A failed handshake raises the
UpstreamError pipeline.open_upstream reads: connect errors, timeouts, 408, 429 and 5xx are
retryable (the next deployment is tried), 401/403 charge the route's breaker.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
from django.conf import settings

from gateway.adapters.base import UpstreamError
from gateway.adapters.http import upstream_error_from
from gateway.clients import client_pool, upstream_proxy
from gateway.dialects import dialect_for

if TYPE_CHECKING:
    from providers.selectors import Deployment

OPERATION = "realtime"
# How long closing the upstream socket waits for its close frame.
CLOSE_TIMEOUT_S = 5.0


def _http_url(deployment: Deployment) -> str:
    return dialect_for(deployment.kind).url(deployment.base_url, OPERATION,
                                            upstream_model=deployment.upstream_model, stream=True)


def realtime_url(deployment: Deployment) -> str:
    """The ws(s) URL of the deployment's realtime endpoint, with its upstream model."""
    scheme, rest = _http_url(deployment).split("://", 1)
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{ws_scheme}://{rest}?{urlencode({'model': deployment.upstream_model})}"


def realtime_headers(deployment: Deployment, *, request_id: str,
                     beta: str | None) -> dict[str, str]:
    dialect = dialect_for(deployment.kind)
    headers = dialect.request_headers(api_key=deployment.api_key, stream=True,
                                      request_id=request_id, extra=deployment.extra_headers)
    # A handshake is a GET without a body.
    headers.pop("content-type", None)
    headers.pop("accept", None)
    if beta:
        headers["openai-beta"] = beta
    return headers


async def realtime_open(deployment: Deployment, *, request_id: str,
                        beta: str | None) -> aiohttp.ClientWebSocketResponse:
    """The upstream socket, open. Raises UpstreamError."""
    url = realtime_url(deployment)
    timeout = min(deployment.timeout_s, settings.GATEWAY_CONNECT_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            return await client_pool.session().ws_connect(
                url, headers=realtime_headers(deployment, request_id=request_id, beta=beta),
                proxy=upstream_proxy(_http_url(deployment)), autoping=True, autoclose=True,
                max_msg_size=settings.GATEWAY_REALTIME_MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S))
    except aiohttp.WSServerHandshakeError as exc:
        raise upstream_error_from(exc.status, b"", (exc.headers or {}).get("retry-after"),
                                  secret=deployment.api_key) from None
    except TimeoutError:
        raise UpstreamError("upstream timed out before opening the realtime socket",
                            retryable=True, error_class="timeout", timeout=True) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"could not reach upstream ({type(exc).__name__})", retryable=True,
                            error_class="connect_error") from None
