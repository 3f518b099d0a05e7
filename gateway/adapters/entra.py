"""HTTP with Microsoft Entra ID: the `http` transport, authenticated by a bearer token from
the OAuth 2.0 client-credentials grant when the provider has `entra` settings (Azure OpenAI;
else the kind's own API-key header).

The token comes from `token_url` (default `https://login.microsoftonline.com/{tenant_id}/
oauth2/v2.0/token`) for `scope` (default `https://cognitiveservices.azure.com/.default`),
with `client_id` and the provider's API key as the client secret. Tokens are cached per
(endpoint, client, scope, secret) and fetched again before they expire: at `expires_in` minus
REFRESH_MARGIN_S, or half the lifetime for a shorter-lived token. Concurrent requests that
find no fresh token wait for the one fetch in flight (per event loop: the admin's connection
test runs its own). A failed fetch is an UpstreamError: retryable when the endpoint could not
be reached or answered 429/5xx, a credentials error (HTTP 401) otherwise."""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
import orjson

from gateway.adapters.base import UpstreamError
from gateway.adapters.http import HttpAdapter
from gateway.clients import client_pool, timeout_for, upstream_proxy

if TYPE_CHECKING:
    from gateway.dialects import Dialect
    from providers.selectors import Deployment

DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_S = 300.0
TOKEN_TIMEOUT_S = 30.0
MAX_CACHED = 256


def token_endpoint(entra: Mapping[str, str]) -> str:
    return entra.get("token_url") or DEFAULT_TOKEN_URL.format(tenant_id=entra["tenant_id"])


class TokenCache:
    """Bearer tokens by credentials, bounded (least recently used out first)."""

    def __init__(self, *, clock=time.monotonic) -> None:
        self._clock = clock
        self._tokens: OrderedDict[tuple, tuple[str, float]] = OrderedDict()
        self._inflight: dict[tuple, asyncio.Future] = {}

    def clear(self) -> None:
        self._tokens.clear()
        self._inflight.clear()

    async def token(self, entra: Mapping[str, str], secret: str) -> str:
        url, scope = token_endpoint(entra), entra.get("scope") or DEFAULT_SCOPE
        key = (url, entra["client_id"], scope, hashlib.sha256(secret.encode()).hexdigest())
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached[1]:
            self._tokens.move_to_end(key)
            return cached[0]
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is None or pending.get_loop() is not loop or pending.done():
            pending = loop.create_task(self._fetch(key, url, entra["client_id"], scope, secret))
            self._inflight[key] = pending
        return await asyncio.shield(pending)

    async def _fetch(self, key: tuple, url: str, client_id: str, scope: str, secret: str) -> str:
        try:
            token, lifetime = await _request_token(url, client_id=client_id, scope=scope,
                                                   secret=secret)
            refresh_in = lifetime - min(REFRESH_MARGIN_S, lifetime / 2)
            self._tokens[key] = (token, self._clock() + refresh_in)
            self._tokens.move_to_end(key)
            while len(self._tokens) > MAX_CACHED:
                self._tokens.popitem(last=False)
            return token
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]


async def _request_token(url: str, *, client_id: str, scope: str,
                         secret: str) -> tuple[str, float]:
    """(access token, lifetime in seconds) from the client-credentials grant."""
    form = {"grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret, "scope": scope}
    try:
        async with client_pool.session().post(url, data=form, allow_redirects=False,
                                              proxy=upstream_proxy(url),
                                              timeout=timeout_for(TOKEN_TIMEOUT_S)) as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"could not reach the Entra ID token endpoint ({type(exc).__name__})",
                            retryable=True, error_class="entra_token") from None
    if status != 200:
        raise UpstreamError(f"the Entra ID token endpoint refused the client credentials "
                            f"(HTTP {status})", status=None if status >= 429 else 401,
                            retryable=status == 429 or status >= 500, error_class="entra_token")
    try:
        data = orjson.loads(raw)
        token, lifetime = data["access_token"], float(data.get("expires_in", 3600))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UpstreamError("the Entra ID token endpoint answered without a token",
                            error_class="entra_token") from None
    if not isinstance(token, str) or not token:
        raise UpstreamError("the Entra ID token endpoint answered without a token",
                            error_class="entra_token")
    return token, lifetime


tokens = TokenCache()


class EntraAdapter(HttpAdapter):
    async def credentials(self, dialect: Dialect, deployment: Deployment) -> dict[str, str]:
        entra = deployment.codec_options.entra
        if not entra:
            return await super().credentials(dialect, deployment)
        return {"authorization": f"Bearer {await tokens.token(entra, deployment.api_key)}"}
