"""Chat turns and task calls through the shared proxy pipeline (gateway.proxy): the same key
checks, idempotency, rate limits, budget reservation, routing with failover, and one ledger row
per call as API traffic. The request is built in the typed IR, so every upstream kind serves
it through its codec; the answer is a whole `ChatResponse` or a stream of JSON events:

    {"type": "provider", "provider": …}            the deployment that answers
    {"type": "delta", "content": …}                 answer text, as it arrives
    {"type": "usage", "input_tokens": …, "output_tokens": …, "cost_usd": "…", "estimated": …}
    {"type": "error", "message": …}                 the call failed (after or before streaming)
    {"type": "rate_limited", "retry_after": …}      refused by a rate limit (seconds to wait)
    {"type": "done"}                                always last, unless the client went away

`cost_usd` is a decimal string, exact, as the ledger bills it.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import orjson

from gateway.adapters.base import UpstreamResponse
from gateway.errors import BudgetExceeded, GatewayError, RateLimited
from gateway.admission import call_admit
from gateway.proxy import ProxyCall, call_finish, open_upstream
from gateway.streaming import sse_format
from gateway.surfaces.relay import TranslatedRelay, call_take_usage, relay_stream
from gateway.surfaces.translated import (UPSTREAM_CODECS, output_tokens_estimate, send_prepared,
                                         upstream_json, upstream_requests)
from gateway.tokens import request_input_tokens
from gateway.types import (ChatRequest, ChatResponse, SSEEvent, StreamError, StreamEvent,
                           TextDelta, TextPart)
from providers.selectors import Deployment, RoutingSnapshot
from usage.idempotency import Replay
from usage.models import UsageSource, UsageStatus
from usage.pricing import cost_usd

# nginx's "client closed request": the ledger's status for a call whose client left before
# any response was sent.
CLIENT_CLOSED = 499


def event(payload: dict[str, Any]) -> bytes:
    return sse_format(orjson.dumps(payload))


DONE = event({"type": "done"})


def call_cost(call: ProxyCall, snapshot: RoutingSnapshot) -> Decimal:
    """What the ledger bills this call: its tokens at the price in force when it started."""
    d = call.deployment
    price = (snapshot.price_for(provider_id=d.provider_id, upstream_model=d.upstream_model,
                                at=call.created_at) if d else None)
    return cost_usd(price=price, input_tokens=call.input_tokens,
                    output_tokens=call.output_tokens, cached_tokens=call.cached_tokens)


def usage_payload(call: ProxyCall, snapshot: RoutingSnapshot) -> dict[str, Any]:
    return {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
            "cost_usd": str(call_cost(call, snapshot)),
            "estimated": call.usage_source == UsageSource.ESTIMATED}


def refusal_payload(exc: GatewayError) -> dict[str, Any]:
    """The event for a call refused or failed before streaming: `rate_limited` for rate and
    capacity limits (with the seconds to wait), `error` for everything else, budgets included."""
    if isinstance(exc, RateLimited) and not isinstance(exc, BudgetExceeded):
        try:
            retry_after = max(1, math.ceil(float(exc.headers.get("retry-after", "1"))))
        except ValueError:
            retry_after = 1
        return {"type": "rate_limited", "retry_after": retry_after}
    return {"type": "error", "message": exc.message}


class EventEncoder:
    """IR stream events -> JSON events (the stream encoder TranslatedRelay drives). Keeps the
    answer's text and the first error it reported."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.error_message = ""

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, ev: StreamEvent) -> list[SSEEvent]:
        if isinstance(ev, TextDelta) and ev.text:
            self._parts.append(ev.text)
            return [(None, {"type": "delta", "content": ev.text})]
        if isinstance(ev, StreamError):
            return self.error(ev.message, ev.type)
        return []

    def finish(self) -> list[SSEEvent]:
        return []

    def error(self, message: str, type: str) -> list[SSEEvent]:
        self.error_message = self.error_message or message
        return [(None, {"type": "error", "message": message})]


# Given the whole answer text, the problems that make it unacceptable (empty: accepted).
OutputCheck = Callable[[str], list[str]]


class EventRelay(TranslatedRelay):
    """An upstream stream of any dialect -> JSON events. Its tail (`usage`, then `done` when
    `closing`) ends a complete or failed stream. `check`, when given, judges the whole answer
    at the end: a rejected answer gets an `error` event with `schema_errors` and the call is
    marked `upstream_error` / `schema_violation`."""

    def __init__(self, call: ProxyCall, snapshot: RoutingSnapshot, *, dialect: str,
                 closing: bool, check: OutputCheck | None = None) -> None:
        self.encoder = EventEncoder()
        super().__init__(call, decoder=UPSTREAM_CODECS[dialect].StreamDecoder(),
                         encoder=self.encoder)
        self._snapshot = snapshot
        self._closing = closing
        self._check = check
        self.finished = False

    @property
    def text(self) -> str:
        return self.encoder.text

    @property
    def error_message(self) -> str:
        return self.encoder.error_message

    def end(self) -> list[bytes]:
        out = super().end()
        self.settle()
        problems = self._check(self.text) if self._check is not None else []
        if problems:
            self.call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=self.call.http_status,
                           error_type="schema_violation")
            message = "the output does not match the task's JSON schema"
            self.encoder.error_message = message
            out.append(event({"type": "error", "message": message, "schema_errors": problems}))
        return out + self.tail()

    def error(self, message: str, type: str) -> list[bytes]:
        return super().error(message, type) + self.tail()

    def tail(self) -> list[bytes]:
        """The closing events (once the call's usage is settled)."""
        self.finished = True
        out = [event({"type": "usage", **usage_payload(self.call, self._snapshot)})]
        if self._closing:
            out.append(DONE)
        return out


async def _finish_detached(call: ProxyCall, snapshot: RoutingSnapshot) -> None:
    """Write the row of a call whose client left: shielded, so a second cancellation cannot
    lose it."""
    await asyncio.shield(asyncio.ensure_future(call_finish(call, snapshot)))


async def call_open(call: ProxyCall, snapshot: RoutingSnapshot,
                    deployments: tuple[Deployment, ...], req: ChatRequest, *,
                    digest: str | None = None) -> UpstreamResponse | Replay:
    """Admit the call (idempotency when `digest` is given, rate limits, budget) and open the
    upstream (routing, failover). Returns the upstream response, or the stored answer of a
    repeated Idempotency-Key. Raises GatewayError: InvalidRequest for content a deployment
    refuses (no row), idempotency conflicts (no row), rejections and routing failures (their
    ledger row written). A cancelled caller (client gone) gets a `client_disconnected` row."""
    prepared = upstream_requests(req, deployments, stream=req.stream)
    prompt_tokens = request_input_tokens(req)

    async def send(deployment: Deployment) -> UpstreamResponse:
        return await send_prepared(deployment, prepared[deployment.route_id],
                                   stream=call.stream, request_id=call.request_id)

    try:
        replay = await call_admit(call, snapshot, deployments, digest=digest,
                                  prompt_tokens=prompt_tokens, max_tokens=req.max_tokens)
        if replay is not None:
            return replay
        upstream = await open_upstream(call, deployments, send)
    except GatewayError:
        if call.status != UsageStatus.OK:
            await call_finish(call, snapshot)
        raise
    except asyncio.CancelledError:
        call.fail(status=UsageStatus.CLIENT_DISCONNECTED, http_status=CLIENT_CLOSED,
                  error_type="client_disconnected")
        await _finish_detached(call, snapshot)
        raise
    # Until the upstream reports usage, bill the estimate: it has the prompt now.
    call.input_tokens = prompt_tokens
    call.usage_source = UsageSource.ESTIMATED
    return upstream


async def call_complete(call: ProxyCall, snapshot: RoutingSnapshot,
                        upstream: UpstreamResponse) -> ChatResponse:
    """The whole answer of a non-streamed call, its usage on the call (reported, else
    estimated). The caller writes the row (call_finish) once it has judged the answer.
    Raises GatewayError with the failure recorded and its row written."""
    try:
        data = await upstream_json(call, upstream)
        resp = UPSTREAM_CODECS[upstream.dialect].parse_response(data)
    except GatewayError as exc:
        if call.status == UsageStatus.OK:
            call.fail(status=UsageStatus.UPSTREAM_ERROR, http_status=exc.status,
                      error_type="bad_response")
        await call_finish(call, snapshot, upstream_broke=True)
        raise
    except asyncio.CancelledError:
        call.fail(status=UsageStatus.CLIENT_DISCONNECTED, http_status=CLIENT_CLOSED,
                  error_type="client_disconnected")
        await _finish_detached(call, snapshot)
        raise
    if isinstance(data.get("usage"), dict):
        call_take_usage(call, resp.usage)
    else:
        call.output_tokens = output_tokens_estimate(resp)
    call.mark_first_token()
    return resp


def response_text(resp: ChatResponse) -> str:
    return "".join(p.text for p in resp.content if isinstance(p, TextPart))


async def event_stream(call: ProxyCall, snapshot: RoutingSnapshot, upstream: UpstreamResponse,
                       relay: EventRelay, *, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The `provider` event, then the relayed answer (gateway.surfaces.relay: one ledger row,
    disconnects drained in the background, failures as an `error` event), then the relay's
    tail if the upstream ended with an in-band error. `headers` are kept with a replayable
    answer."""
    first = event({"type": "provider", "provider": call.deployment.provider_name})
    if call.captured is not None:
        call.captured.append(first)
    yield first
    async with aclosing(relay_stream(call, snapshot, upstream, relay, headers=headers)) as inner:
        async for chunk in inner:
            yield chunk
    if not relay.finished:
        for chunk in relay.tail():
            yield chunk


class DetachedWrites:
    """Runs writes that must outlive the request task (a chat answer stored while its client
    disconnects). Keeps strong references until each is done; bounded by the requests that
    start them."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task] = set()

    def start(self, write: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def run(self, write: Awaitable[Any]) -> Any:
        """Start `write` and wait for it; cancelling the waiter does not cancel the write."""
        return await asyncio.shield(self.start(write))

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


detached_writes = DetachedWrites()
