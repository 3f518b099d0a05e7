"""The upstream end of a realtime session: a WebSocket on the shared aiohttp session.

The URL is the kind's `realtime` URL (gateway.dialects: OpenAI-compatible `{base_url}/realtime
?model=<upstream model>`; Azure OpenAI `{base_url}/openai/realtime?api-version=…&deployment=…`,
or `/openai/v1/realtime?model=…` with `api_version: v1`), the scheme swapped to ws(s); the
headers are the record's (fixed headers, the provider's extra headers) and the credentials
from the kind's transport (gateway.adapters: the kind's API-key header, or an Entra ID
bearer token from its one token cache), plus the client's `OpenAI-Beta`, which selects the
protocol version the client speaks. A failed handshake (or token fetch) raises the
UpstreamError pipeline.open_upstream reads: connect errors, timeouts, 408, 429 and 5xx are
retryable (the next deployment is tried), 401/403 charge the route's breaker.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from django.conf import settings

from gateway.adapters import ADAPTERS
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
                                            upstream_model=deployment.upstream_model, stream=True,
                                            options=deployment.codec_options)


def realtime_url(deployment: Deployment) -> str:
    """The ws(s) URL of the deployment's realtime endpoint, naming its upstream model."""
    scheme, rest = _http_url(deployment).split("://", 1)
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{ws_scheme}://{rest}"


async def realtime_headers(deployment: Deployment, *, request_id: str,
                           beta: str | None) -> dict[str, str]:
    """The handshake's headers. Raises UpstreamError (an Entra token that cannot be had)."""
    dialect = dialect_for(deployment.kind)
    headers = dialect.request_headers(api_key="", stream=True, request_id=request_id,
                                      extra=deployment.extra_headers)
    # A handshake is a GET without a body.
    headers.pop("content-type", None)
    headers.pop("accept", None)
    if beta:
        headers["openai-beta"] = beta
    # The credentials win over every other header, as on HTTP (gateway.adapters.http).
    headers.update(await ADAPTERS[dialect.transport].credentials(dialect, deployment))
    return headers


async def realtime_open(deployment: Deployment, *, request_id: str,
                        beta: str | None) -> aiohttp.ClientWebSocketResponse:
    """The upstream socket, open. Raises UpstreamError."""
    url = realtime_url(deployment)
    timeout = min(deployment.timeout_s, settings.GATEWAY_CONNECT_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            headers = await realtime_headers(deployment, request_id=request_id, beta=beta)
            return await client_pool.session().ws_connect(
                url, headers=headers,
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
