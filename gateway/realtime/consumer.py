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
                as input, its audio at the audio input rate, the response's
                `max_output_tokens`, else the key's default, else admission's
                DEFAULT_MAX_TOKENS, as output, at the audio output rate when the response's
                output modalities, else the session's, include audio: the API's default).
                A refusal answers the client with a realtime `error` event naming the refused
                event, is not forwarded, writes a `rejected` row, and the session goes on.
                `response.done` settles it from its usage: one `realtime` row per response.
    server VAD  a session whose turn detection creates a response at each turn's end (server
                or semantic VAD with `create_response` true, the upstream's default) has the
                gateway create them instead, so that each is admitted first: the upstream's
                turn detection is set to `create_response: false` (the gateway's own
                `session.update`, sent when `session.created` or `session.updated` says true;
                the client's `session.update` rewritten likewise), its `session.updated`
                shown to the client with `create_response` as the client asked, and on each
                `input_audio_buffer.committed` the upstream's VAD sends (not one answering the
                client's own `input_audio_buffer.commit`) the gateway admits and sends a
                `response.create`; a refusal is an `error` event with `event_id` null and no
                response, and the session goes on.
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
import uuid
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
        # Of the conversation, the audio tokens (priced at the audio input rate); whether the
        # session answers in audio; whether the client's turn detection creates responses
        # (which the gateway then does); the client's commits not yet answered.
        self.context_audio_tokens = 0
        self.session_audio = True
        self.client_turns = False
        self.manual_commits = 0
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
        event = accounting.client_event(frame)
        kind = event["type"] if event is not None else None
        if kind == accounting.RESPONSE_CREATE:
            refusal = await self._response_admit(event)
            if refusal is not None:
                await self.send(text_data=refusal)
                return
        elif kind == accounting.SESSION_UPDATE:
            named, detection = accounting.turn_detection(accounting.session_of(event))
            if named:
                self.client_turns = accounting.creates_responses(detection)
                if self.client_turns:
                    text_data, bytes_data = orjson.dumps(
                        accounting.with_create_response(event, False)).decode(), None
        elif kind == accounting.COMMIT:
            self.manual_commits += 1
        elif text_data is not None and '"conversation.item.create"' in text_data:
            self.added_tokens += text_tokens(text_data)
        await self._upstream_send(text_data=text_data, bytes_data=bytes_data)

    async def _upstream_send(self, *, text_data: str | None = None,
                             bytes_data: bytes | None = None) -> None:
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

    async def _response_admit(self, create: dict[str, Any], *,
                              refused_id: bool = True) -> str | None:
        """Admit one `response.create`: None when admitted (its call is pending), else the
        error event for the client (the refusal's `rejected` row written), naming the refused
        event's id when `refused_id`."""
        call = self._response_call()
        deployments = (self.session.deployment,)
        prompt = self.context_tokens + self.added_tokens
        max_tokens = accounting.max_output_tokens(create) or call.key.max_tokens_default
        try:
            await call_admit(call, self.snapshot, deployments, digest=None,
                             prompt_tokens=prompt, max_tokens=max_tokens,
                             audio_input_tokens=min(prompt, self.context_audio_tokens),
                             audio_output=accounting.response_audio(
                                 create, session_audio=self.session_audio))
            await intent_keep(call, self.snapshot, deployments, prompt_tokens=prompt)
        except GatewayError as exc:
            await call_finish(call, self.snapshot)
            return accounting.error_frame(
                exc, client_event_id=accounting.client_event_id(create) if refused_id else None)
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
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        broke = "upstream_error"
                    break
                frame = msg.data
                event = accounting.upstream_event(frame)
                if event is not None:
                    frame = await self._session_seen(event, frame)
                if isinstance(frame, str):
                    await self._to_client(text_data=frame)
                else:
                    await self._to_client(bytes_data=frame)
                if self.pending and self.pending[0].first_token_at is None:
                    self.pending[0].first_token()
                if event is not None:
                    await self._account(event)
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

    async def _session_seen(self, event: dict[str, Any], frame: str | bytes) -> str | bytes:
        """Before the client sees a `session.created` / `session.updated`: the session's output
        modalities noted; an upstream creating responses at each turn's end told not to (the
        gateway creates them, `_turn_ended`); the frame the client gets, its turn detection
        saying `create_response` as the client asked."""
        if event["type"] not in (accounting.SESSION_CREATED, accounting.SESSION_UPDATED):
            return frame
        session = accounting.session_of(event)
        if (audio := accounting.output_audio(session)) is not None:
            self.session_audio = audio
        named, detection = accounting.turn_detection(session)
        if not named or detection is None:
            return frame
        if accounting.creates_responses(detection):
            self.client_turns = True
            await self._upstream_send(text_data=orjson.dumps(
                accounting.turn_update(event)).decode())
        elif self.client_turns:
            return orjson.dumps(accounting.with_create_response(event, True)).decode()
        return frame

    async def _turn_ended(self) -> None:
        """The upstream's VAD committed a turn: the response the client's turn detection
        expects, admitted, then asked for."""
        create = {"type": accounting.RESPONSE_CREATE,
                  "event_id": f"event_gw{uuid.uuid4().hex[:20]}"}
        refusal = await self._response_admit(create, refused_id=False)
        if refusal is not None:
            await self._to_client(text_data=refusal)
        else:
            await self._upstream_send(text_data=orjson.dumps(create).decode())

    async def _account(self, event: dict[str, Any]) -> None:
        if event["type"] == accounting.COMMITTED:
            if self.manual_commits:
                self.manual_commits -= 1
            elif self.client_turns:
                await self._turn_ended()
            return
        if event["type"] in (accounting.SESSION_CREATED, accounting.SESSION_UPDATED):
            return
        if event["type"] == accounting.RESPONSE_DONE:
            call = self.pending.popleft() if self.pending else self._response_call()
            self._forget(call)
            usage = accounting.usage_from(accounting.response_of(event).get("usage"))
            call.usage_reported(usage)
            if failure := accounting.failure_of(event):
                call.failed(status=UsageStatus.UPSTREAM_ERROR, error_type=failure)
            self.context_tokens = usage.input_tokens + usage.output_tokens
            self.context_audio_tokens = usage.audio_input_tokens + usage.audio_output_tokens
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
