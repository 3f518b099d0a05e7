"""One realtime session: a Channels consumer between the client's socket and the upstream's.

    connect     the key (`Authorization: Bearer`, `x-api-key`, or the browsers'
                `openai-insecure-api-key.<key>` subprotocol), `?model=` through routing, the
                upstream socket opened by pipeline.open_upstream (deployment order, breakers,
                the in-flight lease; failover only until a socket opens), then the client is
                accepted (with the `realtime` subprotocol when it offered it). A refusal is
                the handshake's HTTP answer in OpenAI's error shape where the server can send
                one (uvicorn), else a close before accepting.
    relay       frames pass both ways as received (gateway.realtime.accounting reads only
                `response.create`, `response.done` and `error`).
    per response  a `response.create` is admitted first, as a request of its own (RPM/TPM,
                budget reservation of the response's worst case: the conversation so far
                as input, the response's `max_output_tokens`, else the key's default, else
                admission's DEFAULT_MAX_TOKENS, as output). A refusal answers the client with
                a realtime `error` event naming the refused event, is not forwarded, writes a
                `rejected` row, and the session goes on. `response.done` settles it from its
                usage: one `realtime` row per response. Responses the upstream starts by
                itself (server VAD) cannot be refused beforehand; they are billed all the same.
    end         whichever side leaves, the other is closed. Responses still in flight when
                the client leaves are cancelled upstream and their `response.done` awaited
                (bounded by DRAIN_S), so they bill what was reported, as
                `client_disconnected`; without it they bill their input estimate. When the
                upstream leaves, they are `upstream_error` rows at their input estimate.
                The session's own row (`realtime.session`) carries the session's duration
                (`latency_ms`) and no tokens (they are on the response rows, so sums over
                surfaces never count a token twice), status 101: `ok` when the client or
                the gateway (gateway.asgi_guards: idle timeout, message too large) ended it,
                `upstream_error` when the upstream closed with another code than 1000 or broke
                (the route's breaker is then charged).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
from channels.generic.websocket import AsyncWebsocketConsumer

from gateway.admission import call_admit, intent_keep
from gateway.asgi_guards import AUTH_FAILED_CLOSE_CODE
from gateway.call import Call
from gateway.errors import GatewayError, InvalidRequest
from gateway.finish import call_finish
from gateway.intake import authenticate, resolve
from gateway.pipeline import Job, open_upstream, serving
from gateway.realtime import accounting
from gateway.realtime.upstream import OPERATION, realtime_open
from gateway.responses import openai_error_body
from gateway.tokens import text_tokens
from providers.cache import snapshot_cache
from usage.models import UsageStatus

logger = logging.getLogger(__name__)

SURFACE = "realtime"
SESSION_SURFACE = "realtime.session"
BROWSER_KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta."
# How long a client's departure waits for the `response.done` of its responses in flight.
DRAIN_S = 5.0
# The session row's status code: the handshake's 101 Switching Protocols.
SWITCHING_PROTOCOLS = 101


class _Headers:
    """The handshake's headers as gateway.intake reads a request's (`request.headers.get`)."""

    def __init__(self, scope: dict[str, Any], browser_key: str | None) -> None:
        self.headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        if browser_key and not self.headers.get("authorization") and \
                not self.headers.get("x-api-key"):
            self.headers["authorization"] = f"Bearer {browser_key}"


class RealtimeConsumer(AsyncWebsocketConsumer):
    """`/v1/realtime?model=<public model>` (module docstring)."""

    async def websocket_connect(self, message) -> None:
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.session: Call | None = None
        self.pending: collections.deque[Call] = collections.deque()
        self.by_event: dict[str, Call] = {}
        self.finishing: set[asyncio.Task] = set()
        self.settled = asyncio.Event()
        self.reader: asyncio.Task | None = None
        self.ending: asyncio.Task | None = None
        self.client_gone = False
        # The conversation's size so far (the last response's input and output, which the
        # next one reads again) and the text items added since, for the next reservation.
        self.context_tokens = 0
        self.added_tokens = 0
        offered = list(self.scope.get("subprotocols") or ())
        browser_key = next((p[len(BROWSER_KEY_PROTOCOL):] for p in offered
                            if p.startswith(BROWSER_KEY_PROTOCOL)), None)
        beta = next((p[len(BETA_PROTOCOL):].replace("realtime-", "realtime=") for p in offered
                     if p.startswith(BETA_PROTOCOL)), None)
        request = _Headers(self.scope, browser_key)
        beta = request.headers.get("openai-beta") or beta
        sent_id = request.headers.get("x-request-id", "")
        session = Call(surface=SESSION_SURFACE, http_status=SWITCHING_PROTOCOLS,
                       client_request_id=sent_id if 0 < len(sent_id) <= 128 else "")
        try:
            self.snapshot = await snapshot_cache.get()
            session.authenticated(await authenticate(request, self.snapshot))
            model = (parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
                     .get("model") or [""])[0]
            if not model:
                raise InvalidRequest("`model` is required in the query string", param="model")
            deployments = serving(resolve(self.snapshot, session.key, model), OPERATION,
                                  model=model)
        except GatewayError as exc:
            return await self._deny(exc)
        session.described(model=model, stream=True)
        job = Job(snapshot=self.snapshot, deployments=deployments, operation=OPERATION,
                  bodies={}, prompt_tokens=0, max_tokens=None, stream=True)
        try:
            await intent_keep(session, self.snapshot, deployments, prompt_tokens=0)
            self.upstream = await open_upstream(
                session, job, send=lambda d: realtime_open(d, request_id=session.request_id,
                                                           beta=beta))
        except GatewayError as exc:
            await call_finish(session, self.snapshot)
            return await self._deny(exc)
        except asyncio.CancelledError:
            session.disconnected(before_response=True)
            await call_finish(session, self.snapshot)
            raise
        session.first_token()
        self.session = session
        await self.accept(subprotocol="realtime" if "realtime" in offered else None)
        self.reader = asyncio.create_task(self._relay_upstream())

    async def _deny(self, exc: GatewayError) -> None:
        """Refuse the handshake: an HTTP answer in OpenAI's error shape where the server
        supports it, else a close before accepting (the server answers 403)."""
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            headers = [(b"content-type", b"application/json")]
            headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            await self.base_send({"type": "websocket.http.response.start", "status": exc.status,
                                  "headers": headers})
            await self.base_send({"type": "websocket.http.response.body",
                                  "body": orjson.dumps(openai_error_body(exc))})
        else:
            await self.close(code=AUTH_FAILED_CLOSE_CODE if exc.status == 401 else None)

    # -- client -> upstream ------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.upstream is None or self.ending is not None:
            return
        frame = text_data if text_data is not None else bytes_data
        create = accounting.client_event(frame)
        if create is not None:
            refusal = await self._response_admit(create)
            if refusal is not None:
                await self.send(text_data=refusal)
                return
        elif text_data is not None and '"conversation.item.create"' in text_data:
            self.added_tokens += text_tokens(text_data)
        try:
            if text_data is not None:
                await self.upstream.send_str(text_data)
            else:
                await self.upstream.send_bytes(bytes_data)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass  # the upstream is gone: its reader ends the session

    def _response_call(self) -> Call:
        session = self.session
        call = Call(surface=SURFACE, client_request_id=session.client_request_id)
        call.authenticated(session.key)
        call.described(model=session.public_model, stream=True)
        call.routed(session.deployment)
        return call

    async def _response_admit(self, create: dict[str, Any]) -> str | None:
        """Admit one `response.create`: None when admitted (its call is pending), else the
        error event for the client (the refusal's `rejected` row written)."""
        call = self._response_call()
        deployments = (self.session.deployment,)
        prompt = self.context_tokens + self.added_tokens
        max_tokens = accounting.max_output_tokens(create) or call.key.max_tokens_default
        try:
            await call_admit(call, self.snapshot, deployments, digest=None,
                             prompt_tokens=prompt, max_tokens=max_tokens)
            await intent_keep(call, self.snapshot, deployments, prompt_tokens=prompt)
        except GatewayError as exc:
            await call_finish(call, self.snapshot)
            return accounting.error_frame(exc, client_event_id=accounting.client_event_id(create))
        call.prompt_estimated(prompt)
        self.pending.append(call)
        self.settled.clear()
        if event_id := accounting.client_event_id(create):
            self.by_event[event_id] = call
        return None

    # -- upstream -> client ------------------------------------------------------------------
    async def _relay_upstream(self) -> None:
        upstream = self.upstream
        broke = None
        try:
            async for msg in upstream:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = msg.data
                    await self._to_client(text_data=frame)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    frame = msg.data
                    await self._to_client(bytes_data=frame)
                else:
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        broke = "upstream_error"
                    break
                if self.pending and self.pending[0].first_token_at is None:
                    self.pending[0].first_token()
                self._account(frame)
        except (aiohttp.ClientError, ConnectionError) as exc:
            broke = type(exc).__name__
        if not self.client_gone:
            code = upstream.close_code
            if broke is None and code not in (1000, None):
                broke = "upstream_closed"
            await self._end_once(upstream_left=True, broke=broke, code=code)

    async def _to_client(self, **frame) -> None:
        if self.client_gone:
            return
        try:
            await self.send(**frame)
        except (OSError, RuntimeError):
            # The client is gone; its disconnect reaches websocket_disconnect, which ends the
            # session. Meanwhile the upstream's frames are still read and accounted.
            self.client_gone = True

    def _account(self, frame: str | bytes) -> None:
        event = accounting.upstream_event(frame)
        if event is None:
            return
        if event["type"] == accounting.RESPONSE_DONE:
            call = self.pending.popleft() if self.pending else self._response_call()
            self._forget(call)
            usage = accounting.usage_from(accounting.response_of(event).get("usage"))
            call.usage_reported(usage)
            if failure := accounting.failure_of(event):
                call.failed(status=UsageStatus.UPSTREAM_ERROR, error_type=failure)
            self.context_tokens = usage.input_tokens + usage.output_tokens
            self.added_tokens = 0
            self._finish(call)
        else:
            event_id = accounting.error_event_for(event)
            call = self.by_event.pop(event_id, None) if event_id else None
            if call is None:
                return
            self.pending.remove(call)
            detail = event.get("error") if isinstance(event.get("error"), dict) else {}
            call.failed(status=UsageStatus.UPSTREAM_ERROR, http_status=400,
                        error_type=str(detail.get("code") or detail.get("type") or "error")[:64])
            call.nothing_billed()
            self._finish(call)
        if not self.pending:
            self.settled.set()

    def _forget(self, call: Call) -> None:
        for event_id, held in list(self.by_event.items()):
            if held is call:
                del self.by_event[event_id]

    def _finish(self, call: Call, *, upstream_broke: bool = False) -> None:
        # In the background: relaying the next frames does not wait for the ledger.
        task = asyncio.create_task(call_finish(call, self.snapshot, upstream_broke=upstream_broke))
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    # -- the end -----------------------------------------------------------------------------
    async def websocket_disconnect(self, message) -> None:
        self.client_gone = True
        if self.session is not None:
            await self._end_once(upstream_left=False, broke=None, code=message.get("code"))
        await super().websocket_disconnect(message)

    async def _end_once(self, **how) -> None:
        if self.ending is None:
            self.ending = asyncio.create_task(self._end(**how))
        await asyncio.shield(self.ending)

    async def _end(self, *, upstream_left: bool, broke: str | None, code: int | None) -> None:
        """Close the other side and write what is left: the responses in flight, the session."""
        session, upstream = self.session, self.upstream
        if upstream_left:
            for call in self.pending:
                call.failed(status=UsageStatus.UPSTREAM_ERROR,
                            error_type=broke or "upstream_closed")
            if broke:
                session.failed(status=UsageStatus.UPSTREAM_ERROR, error_type=broke)
            await self.close(code=code if code in (1000, 1001) or (code or 0) >= 4000 else 1011)
        else:
            for call in self.pending:
                call.disconnected()
            if self.pending and upstream is not None and not upstream.closed:
                try:
                    await upstream.send_str('{"type":"response.cancel"}')
                    async with asyncio.timeout(DRAIN_S):
                        await self.settled.wait()
                except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
                    pass
        if upstream is not None and not upstream.closed:
            await upstream.close()
        if self.reader is not None and not upstream_left:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        for call in self.pending:
            self._finish(call)
        self.pending.clear()
        self.by_event.clear()
        self._finish(session, upstream_broke=bool(upstream_left and broke))
        await asyncio.gather(*self.finishing, return_exceptions=True)
        if upstream_left and broke:
            logger.info("realtime session %s: the upstream left (%s)", session.request_id, broke)
