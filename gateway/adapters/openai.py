"""OpenAI-compatible upstreams (OpenAI, Azure-style gateways, vLLM, DeepSeek, Moonshot …)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson

from gateway.adapters.base import UpstreamError
from gateway.clients import client_pool, timeout_for, upstream_proxy
from gateway.logs import mask_secrets
from gateway.streaming import sse_events
from providers.selectors import Deployment

MAX_ERROR_BODY = 64 * 1024


class HttpUpstreamResponse:
    """A successful upstream response, read as JSON or as SSE events; close() releases it."""

    def __init__(self, response: aiohttp.ClientResponse, dialect: str) -> None:
        self._response = response
        self.dialect = dialect

    async def json(self) -> dict:
        try:
            raw = await self._response.read()
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream returned a body that is not JSON",
                                status=self._response.status, error_class="bad_response") from None
        finally:
            self._response.release()
        if not isinstance(data, dict):
            raise UpstreamError("upstream returned JSON that is not an object",
                                error_class="bad_response")
        return data

    def events(self) -> AsyncIterator[tuple[str | None, str]]:
        return sse_events(self._response.content.iter_any())

    async def close(self) -> None:
        self._response.close()


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
            message = str(err.get("message") or "")
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


async def post(*, deployment: Deployment, url: str, headers: dict[str, str], body: dict,
               dialect: str) -> HttpUpstreamResponse:
    """POST a JSON body; errors become UpstreamError (retryable where failover makes sense)."""
    session = client_pool.session()
    try:
        response = await session.post(url, data=orjson.dumps(body), headers=headers,
                                      allow_redirects=False, proxy=upstream_proxy(url),
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
                                  secret=deployment.api_key)
    return HttpUpstreamResponse(response, dialect)


class OpenAIAdapter:
    dialect = "openai_chat"

    async def send(self, *, deployment: Deployment, path: str, body: dict, stream: bool,
                   request_id: str) -> HttpUpstreamResponse:
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   "accept": "text/event-stream" if stream else "application/json"}
        headers.update(deployment.extra_headers)
        if deployment.api_key:
            headers["authorization"] = f"Bearer {deployment.api_key}"
        return await post(deployment=deployment, url=deployment.base_url + path, headers=headers,
                          body=body, dialect=self.dialect)
