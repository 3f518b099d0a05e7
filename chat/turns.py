"""The chat page's proxy endpoints (async, session-authenticated, CSRF-checked):

- GET /chat/api/models — the public models the user's chat key may use: `models` those that
  can serve now, `unavailable` the others, each `{"model", "reason", "retry_after_s"}` (every
  circuit open, or no deployment with a weight).
- POST /chat/api/sessions/<id>/messages — `{"content": "…", "model": "…"}` (or
  `{"retry": true, "model": "…"}` to answer the last user message again) streams the answer
  as JSON events (gateway.surfaces.events). The session's history is the context, trimmed to the
  model's window (chat.context); the `x-chat-context-trimmed` header says how many older
  messages were left out. The answer is stored when the stream ends, partial when the user
  stopped it (status `stopped`), with the error when it failed.

Before the stream starts, errors are JSON `{"error": {…}}` with a status: 401 signed out, 400
bad body, 403 model not allowed or chat turned off for the user (their key revoked), 404 no
such session or model. Once admitted, refusals (`rate_limited`, budget `error`) are events.
The user's own API key (chat.services.chat_account_key_hash) carries routing, budgets, rate
limits and the ledger row (surface `chat`).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET, require_POST

from chat.context import chat_request, context_window, history_budget, history_trim
from chat.models import ChatSession, MessageStatus
from chat.detached import detached_writes
from chat.services import (AnswerRecord, NothingToRetry, chat_account_key_hash,
                           chat_answer_store, chat_turn_begin)
from gateway.database import db
from gateway.errors import (AuthenticationFailed, GatewayError, InvalidRequest, NotFound,
                            PermissionDenied)
from gateway.call import Call, call_begin
from gateway.clients import client_pool
from gateway.finish import call_cost
from gateway.intake import read_json, resolve
from gateway.pipeline import Job, call_open, disconnect_guard, upstream_bodies
from gateway.relay import StreamRelay, relay_stream
from gateway.streaming import DRAIN_SECONDS
from gateway.surfaces.events import DONE, event, event_relay, provider_event, refusal_payload
from gateway.tokens import request_input_tokens
from gateway.responses import json_response, openai_error, sse_response
from gateway.routing import Circuit
from gateway.routing_state import BreakerView
from gateway.types import ChatRequest
from providers.cache import key_cache, snapshot_cache
from providers.selectors import Deployment, KeyInfo, RoutingSnapshot

SURFACE = "chat"
MAX_MESSAGE_CHARS = 200_000


async def _chat_key(request: HttpRequest) -> tuple[KeyInfo, RoutingSnapshot, int]:
    """(the user's chat key, the routing snapshot, the user's id). Raises
    AuthenticationFailed (signed out) or PermissionDenied (their key is revoked)."""
    user = await request.auser()
    if not user.is_authenticated:
        raise AuthenticationFailed("sign in to chat", code="not_signed_in")
    key_hash = await db.run(chat_account_key_hash, user_id=user.pk, username=user.get_username())
    snapshot = await snapshot_cache.get()
    # A key created just now (the user's first visit) is read from the database.
    key = await key_cache.find(key_hash)
    if key is None:
        raise PermissionDenied("chat is turned off for your account (its API key is revoked)",
                               code="chat_disabled")
    return key, snapshot, user.pk


def model_unavailable(deployments: Sequence[Deployment], views: Mapping[int, BreakerView], *,
                      now: float) -> dict | None:
    """None when a request for the model could be sent now: one of its deployments (enabled,
    as every deployment in the snapshot is) has a weight and a circuit that is closed, or open
    past its cool-down (the request would be its half-open probe). Otherwise why not:
    `no_active_route` (every weight is 0) or `circuit_open` (every circuit open, or half-open
    with a probe in flight), with the seconds until the first cool-down ends (at least 1)."""
    active = [d for d in deployments if d.weight > 0]
    if not active:
        return {"reason": "no_active_route", "retry_after_s": None}
    reopen: list[float] = []
    for d in active:
        view = views.get(d.route_id)
        if view is None or view.state == Circuit.CLOSED:
            return None
        if view.state == Circuit.OPEN:
            if view.opened_until is None or view.opened_until <= now:
                return None
            reopen.append(view.opened_until - now)
    return {"reason": "circuit_open",
            "retry_after_s": max(1, math.ceil(min(reopen))) if reopen else 1}


@require_GET
async def models_list(request: HttpRequest) -> HttpResponse:
    try:
        key, snapshot, _ = await _chat_key(request)
    except GatewayError as exc:
        return openai_error(exc)
    allowed = [m for m in snapshot.public_models() if key.may_use(m)]
    views = await client_pool.routing().snapshot(
        [d.candidate for m in allowed for d in snapshot.deployments[m]])
    now = time.time()
    models, unavailable = [], []
    for model in allowed:
        why = model_unavailable(snapshot.deployments[model], views, now=now)
        if why is None:
            models.append(model)
        else:
            unavailable.append({"model": model, **why})
    return json_response({"models": models, "unavailable": unavailable})


def _turn_body(body: dict) -> tuple[str, str, bool]:
    """(content, model, retry) of a message request. Raises InvalidRequest."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required", param="model")
    retry = body.get("retry", False)
    if not isinstance(retry, bool):
        raise InvalidRequest("`retry` must be true or false", param="retry")
    content = body.get("content", "")
    if not isinstance(content, str):
        raise InvalidRequest("`content` must be a string", param="content")
    if not retry and not content.strip():
        raise InvalidRequest("type a message first", param="content")
    if len(content) > MAX_MESSAGE_CHARS:
        raise InvalidRequest(f"a message may have at most {MAX_MESSAGE_CHARS} characters",
                             param="content")
    return content, model, retry


@require_POST
async def session_messages(request: HttpRequest, session_id: int) -> HttpResponse:
    try:
        key, snapshot, user_id = await _chat_key(request)
        content, model, retry = _turn_body(read_json(request))
        deployments = resolve(snapshot, key, model)
        turn = await db.run(chat_turn_begin, user_id=user_id, session_id=session_id,
                            content=content, retry=retry, model=model)
    except GatewayError as exc:
        return openai_error(exc)
    except ChatSession.DoesNotExist:
        return openai_error(NotFound("there is no such chat", code="session_not_found"))
    except NothingToRetry as exc:
        return openai_error(InvalidRequest(str(exc), param="retry"))
    max_tokens = key.max_tokens_default or settings.GATEWAY_CHAT_MAX_TOKENS
    turns, trimmed = history_trim(turn.history, budget_tokens=history_budget(
        window=context_window(model), max_tokens=max_tokens))
    req = chat_request(model=model, turns=turns, max_tokens=max_tokens)
    call = call_begin(request, surface=SURFACE)
    call.authenticated(key)
    call.described(model=model, stream=True)
    answer = AnswerRecord(session_id=session_id, content="", status=MessageStatus.COMPLETE,
                          model=model, request_id=call.request_id, context_trimmed=trimmed)
    return sse_response(_answer_stream(call, snapshot, deployments, req, answer),
                        headers={"x-chat-context-trimmed": str(trimmed)})


def _answer(base: AnswerRecord, call: Call, snapshot: RoutingSnapshot, *, content: str,
            status: str, error: str = "") -> AnswerRecord:
    return AnswerRecord(
        session_id=base.session_id, content=content, status=status, error=error,
        model=base.model, provider=call.deployment.provider_name if call.deployment else "",
        request_id=base.request_id, input_tokens=call.input_tokens,
        output_tokens=call.output_tokens, cost_usd=call_cost(call, snapshot),
        context_trimmed=base.context_trimmed)


async def _answer_stream(call: Call, snapshot: RoutingSnapshot,
                         deployments: tuple[Deployment, ...], req: ChatRequest,
                         base: AnswerRecord):
    """The answer's events; the answer is stored before `done`, or, when the client goes away,
    in the background with what it had been sent, once the ledger row is written: its tokens
    and cost are then the row's own."""
    encoder = relay = stream = None
    stored = False
    try:
        try:
            job = Job(snapshot=snapshot, deployments=deployments, operation="chat",
                      bodies=upstream_bodies(req, deployments, stream=True),
                      prompt_tokens=request_input_tokens(req), max_tokens=req.max_tokens,
                      stream=True, req=req)
            async with disconnect_guard(call, snapshot):
                upstream = await call_open(call, job)
        except GatewayError as exc:
            stored = True
            await detached_writes.run(db.run(chat_answer_store, answer=_answer(
                base, call, snapshot, content="", status=MessageStatus.ERROR, error=exc.message)))
            yield event(refusal_payload(exc))
            yield DONE
            return
        relay, encoder = event_relay(call, snapshot, upstream.dialect.codec, closing=False)
        stream = relay_stream(call, snapshot, upstream, relay, headers={},
                              opening=(provider_event(call),))
        async for chunk in stream:
            yield chunk
        stored = True
        failed = encoder.error_message
        await detached_writes.run(db.run(chat_answer_store, answer=_answer(
            base, call, snapshot, content=encoder.text,
            status=MessageStatus.ERROR if failed else MessageStatus.COMPLETE, error=failed)))
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        if not stored:
            # What the user saw when they pressed stop (a drain may add more upstream text).
            shown = encoder.text if encoder is not None else ""
            if stream is not None:
                # Left at our own `yield`, the relay is still open: its disconnect branch
                # closes the upstream and writes the row now.
                await stream.aclose()
            detached_writes.start(_stopped_store(base, call, snapshot, relay, content=shown))
        raise


async def _stopped_store(base: AnswerRecord, call: Call, snapshot: RoutingSnapshot,
                         relay: StreamRelay | None, *, content: str) -> None:
    """Store a stopped answer once its call's ledger row is written (a drain writes it later),
    with the tokens and cost the row billed."""
    if relay is not None:
        try:
            async with asyncio.timeout(DRAIN_SECONDS + 10):
                await relay.recorded.wait()
        except TimeoutError:
            pass  # stored with the call's tokens as they are; the row is the reference
    await db.run(chat_answer_store, answer=_answer(base, call, snapshot, content=content,
                                                   status=MessageStatus.STOPPED))
