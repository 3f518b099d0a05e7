"""Amazon Bedrock: requests signed with SigV4 (botocore's signer), answers read as JSON or as
an AWS event stream (botocore's parser).

Credentials: the provider's API key `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, or,
when it has none, botocore's credential chain (environment, the provider's `aws_profile` or
AWS_PROFILE, container and instance roles, IRSA's web identity), resolved once per process and
refreshed by botocore before it expires; resolving and refreshing may do I/O (the instance
metadata service, STS), so they run in a thread. The region (the provider's `region`) signs
the request and, when the provider gives no base URL, names the endpoint.

The event stream (`application/vnd.amazon.eventstream`) is binary: each message is decoded
here and handed on as (`:event-type`, its JSON payload), the pair the relay reads from SSE,
so the codecs stay transport-free. InvokeModel's stream (`bedrock_messages`, the Anthropic
Messages passthrough) wraps each Anthropic event as base64 in a `chunk` event: it is
unwrapped into the (event type, event JSON) Anthropic's codec reads. An `exception` message
(throttling, a model stream error) becomes the wire's own error event: Converse's named
after the exception, Anthropic's `error`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from yarl import URL

from gateway.adapters.base import UpstreamError
from gateway.adapters.http import HttpUpstreamResponse, send_checked, transport_error

if TYPE_CHECKING:
    from gateway.dialects import Dialect
    from providers.selectors import Deployment

SIGNING_NAME = "bedrock"
MAX_CACHED = 64


class CredentialCache:
    """botocore credentials by (static key, profile), bounded (least recently used out)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], Credentials] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    async def frozen(self, *, api_key: str, profile: str | None) -> ReadOnlyCredentials:
        """The credentials to sign one request with. Raises UpstreamError when none are
        found or they cannot be refreshed."""
        key = (hashlib.sha256(api_key.encode()).hexdigest(), profile or "")
        credentials = self._entries.get(key)
        if credentials is None:
            credentials = await asyncio.to_thread(_resolve, api_key, profile)
            self._entries[key] = credentials
            while len(self._entries) > MAX_CACHED:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        if not isinstance(credentials, RefreshableCredentials):
            return credentials.get_frozen_credentials()
        try:
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        except Exception as exc:  # botocore raises many kinds while refreshing
            self._entries.pop(key, None)
            raise UpstreamError(f"the AWS credentials could not be refreshed "
                                f"({type(exc).__name__})", retryable=True,
                                error_class="credentials") from None


def _resolve(api_key: str, profile: str | None) -> Credentials:
    if api_key:
        access, secret, *token = api_key.split(":", 2)
        return Credentials(access, secret, token[0] if token else None)
    import botocore.session

    try:
        credentials = botocore.session.Session(profile=profile).get_credentials()
    except Exception as exc:  # a missing profile, an unreadable config file
        raise UpstreamError(f"no AWS credentials ({type(exc).__name__})",
                            error_class="credentials") from None
    if credentials is None:
        raise UpstreamError("no AWS credentials: give the provider an access key, or set them "
                            "in the environment, a profile or an instance role",
                            error_class="credentials")
    return credentials


credential_cache = CredentialCache()


def signed_headers(*, url: str, body: bytes, headers: Mapping[str, str], region: str,
                   credentials: ReadOnlyCredentials) -> dict[str, str]:
    """`headers` plus SigV4's (`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`) for a
    POST of `body` to `url` (already percent-encoded, sent as it is)."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, SIGNING_NAME, region).add_auth(request)
    return dict(request.headers.items())


class BedrockResponse(HttpUpstreamResponse):
    """A Bedrock answer: JSON as over plain HTTP, or an AWS event stream."""

    async def events(self) -> AsyncIterator[tuple[str | None, str]]:
        if self._response.content_type == "application/json":
            async for item in super().events():
                yield item
            return
        buffer = EventStreamBuffer()
        anthropic = self.dialect.wire == "anthropic_messages"
        try:
            # The buffer holds at most one message, whose length botocore bounds (its prelude
            # is checked against a 24 MiB limit before the payload is read).
            async for chunk in self._response.content.iter_any():
                buffer.add_data(chunk)
                for message in buffer:
                    yield _event(message, anthropic=anthropic)
        except ParserError as exc:
            raise UpstreamError(f"the upstream's event stream is unreadable "
                                f"({type(exc).__name__})", error_class="bad_stream") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, "mid-stream") from None


def _event(message: EventStreamMessage, *, anthropic: bool) -> tuple[str | None, str]:
    """One event-stream message as the (event type, JSON text) its wire's codec reads."""
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "event":
        name = str(headers.get(":event-type") or "")
        payload = message.payload.decode("utf-8", errors="replace") or "{}"
        if not anthropic or name != "chunk":
            return name, payload
        try:
            inner = base64.b64decode(orjson.loads(payload)["bytes"])
            event = orjson.loads(inner)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
            raise UpstreamError("the upstream sent a chunk that is not a base64 Anthropic event",
                                error_class="bad_stream") from None
        if not isinstance(event, dict):
            return None, inner.decode()
        if event.pop("amazon-bedrock-invocationMetrics", None) is not None:
            # Bedrock's own counts on `message_stop`; the Anthropic event is relayed without them.
            inner = orjson.dumps(event)
        return event.get("type"), inner.decode()
    if kind == "exception":
        name = str(headers.get(":exception-type") or "exception")
        try:
            text = orjson.loads(message.payload).get("message")
        except (orjson.JSONDecodeError, AttributeError):
            text = None
    else:
        name = str(headers.get(":error-code") or "error")
        text = headers.get(":error-message")
    text = str(text or name)
    if anthropic:
        return "error", orjson.dumps({"type": "error", "error": {
            "type": "overloaded_error" if name == "throttlingException" else "api_error",
            "message": f"{name}: {text}"}}).decode()
    return (name if name.endswith("Exception") else "error"), orjson.dumps(
        {"message": f"{name}: {text}"}).decode()


class BedrockAdapter:
    async def send(self, *, dialect: Dialect, deployment: Deployment, operation: str, body: dict,
                   stream: bool, request_id: str,
                   forwarded: Mapping[str, str] | None = None) -> BedrockResponse:
        options = deployment.codec_options
        if not options.region:
            raise UpstreamError("the Bedrock provider has no region", error_class="config")
        # The model id is one path segment: an ARN's ':' and '/' are escaped, as boto3 does.
        url = dialect.url(deployment.base_url, operation,
                          upstream_model=quote(deployment.upstream_model, safe=""),
                          stream=stream, options=options)
        headers = dialect.request_headers(api_key="", stream=stream, request_id=request_id,
                                          extra=deployment.extra_headers, forwarded=forwarded,
                                          beta_add=options.anthropic_beta_add,
                                          beta_remove=options.anthropic_beta_remove)
        headers["accept"] = "application/vnd.amazon.eventstream" if stream \
            else "application/json"
        betas = headers.pop(dialect.beta_header, None) if dialect.beta_header else None
        if operation == "chat":
            # The other operations' bodies (embeddings, count_tokens) are built whole.
            if dialect.envelope is not None:
                body = dialect.envelope(body, stream)
            if betas:
                # InvokeModel takes Anthropic's betas in the body.
                body = {**body, "anthropic_beta": [b for b in betas.split(",") if b]}
        payload = orjson.dumps(body)
        credentials = await credential_cache.frozen(api_key=deployment.api_key,
                                                    profile=options.aws_profile)
        headers = signed_headers(url=url, body=payload, headers=headers, region=options.region,
                                 credentials=credentials)
        return await _post(deployment=deployment, url=url, headers=headers, payload=payload,
                           dialect=dialect, secret=credentials.secret_key)


async def _post(*, deployment: Deployment, url: str, headers: dict[str, str], payload: bytes,
                dialect: Dialect, secret: str) -> BedrockResponse:
    # encoded=True: the bytes signed are the bytes sent (yarl would unescape '%3A').
    response = await send_checked(deployment=deployment, url=URL(url, encoded=True),
                                  headers=headers, data=payload, secret=secret)
    return BedrockResponse(response, dialect)
