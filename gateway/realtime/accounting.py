"""What the realtime relay reads of the frames it passes through, and nothing more. Pure.

Frames are relayed as received. Only three kinds are parsed: `response.create` from the
client (admission), `response.done` and `error` from the upstream (settlement). A cheap
substring test picks the candidates, so an audio delta is never decoded; a candidate is then
parsed and its `type` checked (the substring may be quoted text inside another event).

Usage of `response.done` in the IR (gateway.types.Usage): `input_tokens` and `output_tokens`
as reported (they include cached, audio and image tokens, as the IR's do); `cached_tokens`
from `input_token_details.cached_tokens`; `audio_input_tokens` and `image_input_tokens` are
the uncached audio and image input (the cached ones are billed at the cached rate, so no token
is billed twice); `audio_output_tokens` from `output_token_details.audio_tokens`.
"""
from __future__ import annotations

import uuid
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.types import Usage

RESPONSE_CREATE = "response.create"
RESPONSE_DONE = "response.done"
ERROR = "error"

_CLIENT_MARKS = (b'"response.create"',)
_UPSTREAM_MARKS = (b'"response.done"', b'"error"')


def _typed(frame: str | bytes, marks: tuple[bytes, ...],
           wanted: tuple[str, ...]) -> dict[str, Any] | None:
    raw = frame.encode() if isinstance(frame, str) else frame
    if not any(mark in raw for mark in marks):
        return None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(event, dict) and event.get("type") in wanted:
        return event
    return None


def client_event(frame: str | bytes) -> dict[str, Any] | None:
    """The client's `response.create` event, parsed; None for every other frame."""
    return _typed(frame, _CLIENT_MARKS, (RESPONSE_CREATE,))


def upstream_event(frame: str | bytes) -> dict[str, Any] | None:
    """The upstream's `response.done` or `error` event, parsed; None for every other frame."""
    return _typed(frame, _UPSTREAM_MARKS, (RESPONSE_DONE, ERROR))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from(usage: object) -> Usage:
    """`response.done`'s `response.usage` as the IR counts it (module docstring)."""
    if not isinstance(usage, dict):
        return Usage()
    inp = usage.get("input_token_details")
    inp = inp if isinstance(inp, dict) else {}
    out = usage.get("output_token_details")
    out = out if isinstance(out, dict) else {}
    cached_details = inp.get("cached_tokens_details")
    cached_details = cached_details if isinstance(cached_details, dict) else {}
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cached_tokens=_int(inp.get("cached_tokens")),
        audio_input_tokens=max(0, _int(inp.get("audio_tokens"))
                               - _int(cached_details.get("audio_tokens"))),
        image_input_tokens=max(0, _int(inp.get("image_tokens"))
                               - _int(cached_details.get("image_tokens"))),
        audio_output_tokens=_int(out.get("audio_tokens")),
    )


def response_of(done: dict[str, Any]) -> dict[str, Any]:
    response = done.get("response")
    return response if isinstance(response, dict) else {}


def failure_of(done: dict[str, Any]) -> str | None:
    """The error type of a `response.done` whose response failed, else None (completed,
    cancelled and incomplete responses are answers, billed as `ok`)."""
    response = response_of(done)
    if response.get("status") != "failed":
        return None
    details = response.get("status_details")
    error = details.get("error") if isinstance(details, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return str(kind)[:64] if kind else "response_failed"


def max_output_tokens(create: dict[str, Any]) -> int | None:
    """The cap `response.create` puts on the response's output (`response.max_output_tokens`,
    or the beta name `max_response_output_tokens`); None for none or "inf"."""
    response = create.get("response")
    if not isinstance(response, dict):
        return None
    for name in ("max_output_tokens", "max_response_output_tokens"):
        value = response.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def client_event_id(event: dict[str, Any]) -> str | None:
    value = event.get("event_id")
    return value if isinstance(value, str) and value else None


def error_event_for(error: dict[str, Any]) -> str | None:
    """The client event an upstream `error` event answers (`error.event_id`), if it says."""
    detail = error.get("error")
    value = detail.get("event_id") if isinstance(detail, dict) else None
    return value if isinstance(value, str) and value else None


def error_frame(exc: GatewayError, *, client_event_id: str | None) -> str:
    """OpenAI's realtime `error` event for a refusal: `{"type": "error", "event_id", "error":
    {"type", "code", "message", "param", "event_id"}}` (`error.event_id`: the client event
    refused)."""
    return orjson.dumps({
        "type": ERROR, "event_id": f"event_{uuid.uuid4().hex[:24]}",
        "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                  "param": exc.param, "event_id": client_event_id},
    }).decode()
