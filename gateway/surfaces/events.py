"""The JSON-event stream of the chat page and of tasks (`?stream=1`): an answer of any upstream
as simple events, written from the IR.

    {"type": "provider", "provider": …}            the deployment that answers
    {"type": "delta", "content": …}                 answer text, as it arrives
    {"type": "usage", "input_tokens": …, "output_tokens": …, "cost_usd": "…", "estimated": …}
    {"type": "error", "message": …}                 the call failed (after or before streaming)
    {"type": "rate_limited", "retry_after": …}      refused by a rate limit (seconds to wait)
    {"type": "done"}                                always last, unless the client went away

`cost_usd` is a decimal string, exact, as the ledger bills it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from gateway.call import Call
from gateway.errors import BudgetExceeded, GatewayError, RateLimited
from gateway.finish import call_cost
from gateway.relay import StreamRelay
from gateway.streaming import sse_format
from gateway.types import ChatResponse, SSEEvent, StreamError, StreamEvent, TextDelta, TextPart
from providers.selectors import RoutingSnapshot
from usage.models import UsageSource, UsageStatus

# Given the whole answer text, the problems that make it unacceptable (empty: accepted).
OutputCheck = Callable[[str], list[str]]


def event(payload: dict[str, Any]) -> bytes:
    return sse_format(orjson.dumps(payload))


DONE = event({"type": "done"})


def usage_payload(call: Call, snapshot: RoutingSnapshot) -> dict[str, Any]:
    return {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
            "cost_usd": str(call_cost(call, snapshot)),
            "estimated": call.usage_source == UsageSource.ESTIMATED}


def provider_event(call: Call) -> bytes:
    return event({"type": "provider", "provider": call.deployment.provider_name})


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


def response_text(resp: ChatResponse) -> str:
    return "".join(p.text for p in resp.content if isinstance(p, TextPart))


class EventEncoder:
    """IR stream events -> JSON events (the StreamEncoder a StreamRelay drives). Keeps the
    answer's text and the first error it reported. Its closing events (the `usage`, then `done`
    when `closing`) end a complete or failed stream; `check`, when given, judges the whole
    answer at the end: a rejected answer gets an `error` event with `schema_errors` and the
    call is marked `upstream_error` / `schema_violation`."""

    def __init__(self, call: Call, snapshot: RoutingSnapshot, *, closing: bool,
                 check: OutputCheck | None = None) -> None:
        self._call = call
        self._snapshot = snapshot
        self._closing = closing
        self._check = check
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
        problems = self._check(self.text) if self._check is not None else []
        out: list[SSEEvent] = []
        if problems:
            self._call.failed(status=UsageStatus.UPSTREAM_ERROR, error_type="schema_violation")
            self.error_message = "the output does not match the task's JSON schema"
            out.append((None, {"type": "error", "message": self.error_message,
                               "schema_errors": problems}))
        return out + self._tail()

    def error(self, message: str, type: str) -> list[SSEEvent]:
        self.error_message = self.error_message or message
        return [(None, {"type": "error", "message": message}), *self._tail()]

    def _tail(self) -> list[SSEEvent]:
        out: list[SSEEvent] = [(None, {"type": "usage",
                                       **usage_payload(self._call, self._snapshot)})]
        if self._closing:
            out.append((None, {"type": "done"}))
        return out


def event_relay(call: Call, snapshot: RoutingSnapshot, codec, *, closing: bool,
                check: OutputCheck | None = None) -> tuple[StreamRelay, EventEncoder]:
    """A relay of an upstream (of `codec`'s wire format) to JSON events, and its encoder."""
    encoder = EventEncoder(call, snapshot, closing=closing, check=check)
    return StreamRelay(call, codec=codec, encoder=encoder), encoder
