"""Google Cloud Vertex AI: the `http` transport with an OAuth 2.0 access token from
google-auth, and the body in the envelope its kind needs (Anthropic-on-Vertex takes the
Messages body without `model`, with `anthropic_version`).

Credentials: the provider's API key is a service-account key (its JSON), read with
`google.oauth2.service_account.Credentials` for the `cloud-platform` scope; the token comes
from the key's `token_uri` (Google's, or a fake on loopback in tests). Without a key, the
process's Application Default Credentials (`google.auth.default`: GOOGLE_APPLICATION_CREDENTIALS,
workload identity, the metadata server). Credentials are cached per key; a token is fetched
again when google-auth no longer counts it valid (from 3 min 45 s before it expires), in a
thread (google-auth is synchronous), one refresh at a time per key. A refresh that fails is an
UpstreamError: retryable when the token endpoint could not be reached, a credentials error
otherwise."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.adapters.base import UpstreamError
from gateway.adapters.http import HttpAdapter, HttpUpstreamResponse
from gateway.clients import upstream_proxy

if TYPE_CHECKING:
    from gateway.dialects import Dialect
    from providers.selectors import Deployment

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
MAX_CACHED = 64
TOKEN_TIMEOUT_S = 30.0


class _Source:
    """One key's credentials, refreshed under a lock (from any thread or event loop)."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self.lock = threading.Lock()

    def token(self) -> str:
        with self.lock:
            if not self.credentials.valid:
                self.credentials.refresh(_google_request(self.credentials))
            return self.credentials.token


def _google_request(credentials: Any):
    import urllib3
    from google.auth.transport.urllib3 import Request

    token_uri = getattr(credentials, "_token_uri", None) or "https://oauth2.googleapis.com/token"
    proxy = upstream_proxy(token_uri)
    timeout = urllib3.Timeout(total=TOKEN_TIMEOUT_S)
    pool = urllib3.ProxyManager(proxy, timeout=timeout) if proxy \
        else urllib3.PoolManager(timeout=timeout)
    return Request(pool)


def _credentials(api_key: str) -> Any:
    if api_key:
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(json.loads(api_key),
                                                                     scopes=SCOPES)
    import google.auth

    credentials, _ = google.auth.default(scopes=SCOPES)
    return credentials


class TokenSources:
    """Credentials by key, bounded (least recently used out first)."""

    def __init__(self) -> None:
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def clear(self) -> None:
        self._sources.clear()

    async def token(self, api_key: str) -> str:
        """A valid access token for the key. Raises UpstreamError."""
        from google.auth import exceptions

        key = hashlib.sha256(api_key.encode()).hexdigest()
        try:
            source = self._sources.get(key)
            if source is None:
                source = _Source(await asyncio.to_thread(_credentials, api_key))
                self._sources[key] = source
                while len(self._sources) > MAX_CACHED:
                    self._sources.popitem(last=False)
            self._sources.move_to_end(key)
            if source.credentials.valid:
                return source.credentials.token
            return await asyncio.to_thread(source.token)
        except exceptions.TransportError as exc:
            raise UpstreamError(f"could not reach the Google token endpoint "
                                f"({type(exc).__name__})", retryable=True,
                                error_class="google_token") from None
        except (exceptions.GoogleAuthError, ValueError) as exc:
            raise UpstreamError(f"Google refused the service-account credentials "
                                f"({type(exc).__name__})", status=401,
                                error_class="google_token") from None


tokens = TokenSources()


class VertexAdapter(HttpAdapter):
    async def send(self, *, dialect: Dialect, deployment: Deployment, operation: str, body: dict,
                   stream: bool, request_id: str,
                   forwarded: Mapping[str, str] | None = None) -> HttpUpstreamResponse:
        if dialect.envelope is not None and operation == "chat":
            # The other operations' bodies (embeddings, count_tokens) are built whole.
            body = dialect.envelope(body, stream)
        return await super().send(dialect=dialect, deployment=deployment, operation=operation,
                                  body=body, stream=stream, request_id=request_id,
                                  forwarded=forwarded)

    async def credentials(self, dialect: Dialect, deployment: Deployment) -> dict[str, str]:
        return {"authorization": f"Bearer {await tokens.token(deployment.api_key)}"}
