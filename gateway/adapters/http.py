"""Upstreams reached over HTTP: every kind but `mock` (OpenAI-compatible servers, Anthropic).

The URL and headers come from the kind's gateway.dialects record; this module posts the body
with the shared client pool and classifies what comes back. Connect errors, timeouts before
the first byte, 408, 429 and 5xx (Anthropic's 529 "overloaded" included) are retryable; the
error bodies of OpenAI (`{"error": {"message"}}`) and Anthropic (`{"type": "error", "error":
{"message"}}`) are read by the same classifier. A JSON body answering a streamed request is
read as the events its wire format would have streamed (gateway.codecs.replay). Reading the
answer (`json`, `events`) raises only UpstreamError: aiohttp's exceptions and the SSE
parser's stop here."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import aiohttp
import orjson
from yarl import URL

from gateway.adapters.base import UpstreamError
from gateway.clients import client_pool, timeout_for, upstream_proxy
from gateway.codecs.replay import whole_body_events
from gateway.errors import GatewayError
from gateway.logs import mask_secrets
from gateway.streaming import SSEError, sse_events

if TYPE_CHECKING:
    from gateway.dialects import Dialect
    from providers.selectors import Deployment

MAX_ERROR_BODY = 64 * 1024


class HttpUpstreamResponse:
    """A successful upstream response, read as JSON or as SSE events; close() releases it."""

    def __init__(self, response: aiohttp.ClientResponse, dialect: Dialect) -> None:
        self._response = response
        self.dialect = dialect

    async def json(self) -> dict:
        try:
            raw = await self._response.read()
            data = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, "while reading the response") from None
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream returned a body that is not JSON",
                                status=self._response.status, error_class="bad_response") from None
        finally:
            self._response.release()
        if not isinstance(data, dict):
            raise UpstreamError("upstream returned JSON that is not an object",
                                error_class="bad_response")
        return data

    async def events(self) -> AsyncIterator[tuple[str | None, str]]:
        if self._response.content_type == "application/json":
            # Some compatible servers answer `stream: true` with the whole body; it is relayed
            # as the stream the upstream would have sent.
            data = await self.json()
            try:
                items = whole_body_events(self.dialect.codec, data)
            except GatewayError as exc:
                raise UpstreamError(exc.message, error_class="bad_response") from None
            for item in items:
                yield item
            return
        try:
            async for item in sse_events(self._response.content.iter_any()):
                yield item
        except SSEError as exc:
            raise UpstreamError(f"the upstream's event stream is unreadable: {exc}",
                                error_class="bad_stream") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, "mid-stream") from None

    async def close(self) -> None:
        self._response.close()


def transport_error(exc: BaseException, when: str) -> UpstreamError:
    """An aiohttp failure after the upstream answered, as the UpstreamError the pipeline reads
    (a timeout keeps `timeout`, so the call is billed as one)."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(f"the upstream timed out {when}", error_class="timeout", timeout=True)
    # aiohttp reports a reset mid-body as a ClientPayloadError naming the ConnectionResetError
    # only in its text; the ledger tells the two apart.
    reset = isinstance(exc, ConnectionResetError) or "ConnectionResetError" in str(exc)
    return UpstreamError(f"the upstream connection {'was reset' if reset else 'failed'} {when}"
                         f" ({type(exc).__name__})",
                         error_class="connection_reset" if reset else type(exc).__name__)


def upstream_error_from(status: int, body: bytes, retry_after: str | None, *,
                        secret: str = "") -> UpstreamError:
    """Classify an upstream error status. The upstream's message is relayed for client errors
    (their request was wrong), with our provider key (`secret`) and anything key-shaped
    masked; for auth failures it is withheld altogether."""
    message = ""
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "") + _content_filters(err)
        elif isinstance(err, str):
            message = err
        elif isinstance(data, dict) and isinstance(data.get("message"), str):
            message = data["message"]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if secret:
        message = message.replace(secret, "***")
    message = mask_secrets(message)[:500]
    delay = None
    if retry_after:
        try:
            delay = max(0.0, float(retry_after))
        except ValueError:
            delay = None
    if status in (401, 403):
        return UpstreamError(f"upstream rejected the gateway's credentials (HTTP {status})",
                             status=status, error_class=f"http_{status}")
    retryable = status == 429 or status >= 500 or status == 408
    text = f"upstream HTTP {status}" + (f": {message}" if message else "")
    return UpstreamError(text, status=status, retryable=retryable, retry_after=delay,
                         error_class=f"http_{status}")


def _content_filters(err: dict) -> str:
    """Azure OpenAI's prompt filter (`code: content_filter`): the categories that fired, from
    `innererror.content_filter_result`, so the client's 400 names the filter."""
    if err.get("code") != "content_filter":
        return ""
    inner = err.get("innererror") if isinstance(err.get("innererror"), dict) else {}
    results = inner.get("content_filter_result")
    fired = [f"{name}" + (f" ({r['severity']})" if isinstance(r.get("severity"), str) else "")
             for name, r in (results.items() if isinstance(results, dict) else ())
             if isinstance(r, dict) and r.get("filtered")]
    return f" [content filter: {', '.join(fired) if fired else 'content_filter'}]"


async def post(*, deployment: Deployment, url: str, headers: dict[str, str], body: dict,
               dialect: Dialect) -> HttpUpstreamResponse:
    """POST a JSON body; errors become UpstreamError (retryable where failover makes sense)."""
    response = await send_checked(deployment=deployment, url=url, headers=headers,
                                  data=orjson.dumps(body), secret=deployment.api_key)
    return HttpUpstreamResponse(response, dialect)


async def send_checked(*, deployment: Deployment, url: str | URL, headers: dict[str, str],
                       data: bytes, secret: str) -> aiohttp.ClientResponse:
    """POST `data` on the shared pool and return a successful (< 300) response. Connect errors
    and timeouts before the first byte are retryable UpstreamErrors; redirects are refused; an
    error status is classified by `upstream_error_from` (with `secret` masked). Every
    transport of this package sends through here."""
    session = client_pool.session()
    try:
        response = await session.post(url, data=data, headers=headers,
                                      allow_redirects=False, proxy=upstream_proxy(str(url)),
                                      timeout=timeout_for(deployment.timeout_s))
    except asyncio.TimeoutError:
        raise UpstreamError("upstream timed out before responding", retryable=True,
                            error_class="timeout", timeout=True) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"could not reach upstream ({type(exc).__name__})", retryable=True,
                            error_class="connect_error") from None
    if response.status >= 300:
        try:
            body_bytes = await response.content.read(MAX_ERROR_BODY)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body_bytes = b""
        finally:
            response.close()
        if response.status < 400:
            raise UpstreamError(f"upstream answered with a redirect (HTTP {response.status}); "
                                "redirects are not followed", status=response.status,
                                error_class="redirect")
        raise upstream_error_from(response.status, body_bytes, response.headers.get("retry-after"),
                                  secret=secret)
    return response


class HttpAdapter:
    async def send(self, *, dialect: Dialect, deployment: Deployment, operation: str, body: dict,
                   stream: bool, request_id: str,
                   forwarded: Mapping[str, str] | None = None) -> HttpUpstreamResponse:
        options = deployment.codec_options
        url = dialect.url(deployment.base_url, operation, upstream_model=deployment.upstream_model,
                          stream=stream, options=options)
        headers = dialect.request_headers(api_key="", stream=stream,
                                          request_id=request_id, extra=deployment.extra_headers,
                                          forwarded=forwarded,
                                          beta_add=options.anthropic_beta_add,
                                          beta_remove=options.anthropic_beta_remove)
        headers.update(await self.credentials(dialect, deployment))
        return await post(deployment=deployment, url=url, headers=headers, body=body,
                          dialect=dialect)

    async def credentials(self, dialect: Dialect, deployment: Deployment) -> dict[str, str]:
        """The headers that authenticate one request (they win over every other header): the
        kind's own form of the provider's API key. Raises UpstreamError."""
        return dialect.auth(deployment.api_key) if deployment.api_key else {}
