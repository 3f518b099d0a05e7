"""What the realtime relay reads of the frames it passes through, and nothing more. Pure.

Frames are relayed as received. Only these are parsed: `response.create` from the client
(admission), `response.done` and `error` from the upstream (settlement); for the output
modalities and server VAD, `session.update` and `input_audio_buffer.commit` from the client,
`session.created`, `session.updated` and `input_audio_buffer.committed` from the upstream. A cheap
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
SESSION_UPDATE = "session.update"
COMMIT = "input_audio_buffer.commit"
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
COMMITTED = "input_audio_buffer.committed"

_CLIENT_TYPES = (RESPONSE_CREATE, SESSION_UPDATE, COMMIT)
_UPSTREAM_TYPES = (RESPONSE_DONE, ERROR, SESSION_CREATED, SESSION_UPDATED, COMMITTED)
# Quoted event names: base64 audio has neither quotes nor dots, so an audio frame never matches.
_CLIENT_MARKS = tuple(f'"{t}"'.encode() for t in _CLIENT_TYPES)
_UPSTREAM_MARKS = tuple(f'"{t}"'.encode() for t in _UPSTREAM_TYPES)


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
    """The client's `response.create`, `session.update` or `input_audio_buffer.commit`,
    parsed; None for every other frame."""
    return _typed(frame, _CLIENT_MARKS, _CLIENT_TYPES)


def upstream_event(frame: str | bytes) -> dict[str, Any] | None:
    """The upstream's `response.done`, `error`, `session.created`, `session.updated` or
    `input_audio_buffer.committed`, parsed; None for every other frame."""
    return _typed(frame, _UPSTREAM_MARKS, _UPSTREAM_TYPES)


def session_of(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    return session if isinstance(session, dict) else {}


def _turn_holder(session: dict[str, Any]) -> dict[str, Any] | None:
    """The object holding `turn_detection`: the session itself (the beta protocol), or
    `session.audio.input` (GA); None when the session does not name it."""
    if "turn_detection" in session:
        return session
    audio = session.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    return inp if isinstance(inp, dict) and "turn_detection" in inp else None


def turn_detection(session: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(whether the session names its turn detection, the turn detection: None when off)."""
    holder = _turn_holder(session)
    if holder is None:
        return False, None
    value = holder["turn_detection"]
    return True, value if isinstance(value, dict) else None


def creates_responses(detection: dict[str, Any] | None) -> bool:
    """Whether this turn detection has the upstream create a response at each turn's end
    (server and semantic VAD do unless `create_response` is false)."""
    return detection is not None and detection.get("create_response", True) is not False


def with_create_response(event: dict[str, Any], value: bool) -> dict[str, Any]:
    """A copy of a session event whose turn detection says `create_response: value` (an
    event that names none, or has it off, comes back as it is)."""
    session = dict(session_of(event))
    holder = _turn_holder(session)
    if holder is None or not isinstance(holder["turn_detection"], dict):
        return event
    detection = {**holder["turn_detection"], "create_response": value}
    if holder is session:
        session["turn_detection"] = detection
    else:
        audio = dict(session["audio"])
        audio["input"] = {**holder, "turn_detection": detection}
        session["audio"] = audio
    return {**event, "session": session}


def turn_update(created: dict[str, Any]) -> dict[str, Any]:
    """The `session.update` that keeps `created`'s turn detection but has the gateway create
    the responses (`create_response: false`), in the protocol `created` speaks (GA sessions
    carry `type`, which GA updates require)."""
    session = with_create_response(created, False)["session"]
    holder = _turn_holder(session)
    update: dict[str, Any] = {"turn_detection": holder["turn_detection"]}
    if holder is not session:
        update = {"audio": {"input": update}}
    if "type" in session:
        update["type"] = session["type"]
    return {"type": SESSION_UPDATE, "event_id": f"event_gw{uuid.uuid4().hex[:20]}",
            "session": update}


def output_audio(holder: dict[str, Any]) -> bool | None:
    """Whether a session's or a response's output modalities (`output_modalities`, or the
    beta `modalities`) include audio; None when it names none."""
    for name in ("output_modalities", "modalities"):
        value = holder.get(name)
        if isinstance(value, list):
            return "audio" in value
    return None


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


def response_audio(create: dict[str, Any], *, session_audio: bool) -> bool:
    """Whether a `response.create`'s response may answer in audio: its own output modalities,
    else the session's."""
    response = create.get("response")
    named = output_audio(response) if isinstance(response, dict) else None
    return session_audio if named is None else named


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
