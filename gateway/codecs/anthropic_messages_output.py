"""Anthropic Messages, output side: `message` bodies and the `message_start` ... `message_stop`
event stream, read from an Anthropic upstream and written for an Anthropic client.

Anthropic's `input_tokens` excludes cache reads and writes, which it reports separately; the IR
counts them in (`Usage.input_tokens` is the whole prompt), so both directions convert here.
"""
from __future__ import annotations

import json
from typing import Any

from gateway.codecs.fields import count
from gateway.codecs.ids import prefixed
from gateway.errors import UpstreamFailed
from gateway.types import (BlockStop, ChatResponse, ContentPart, MessageStart, RedactedThinking,
                           RedactedThinkingPart, SignatureDelta, SSEEvent, Stop, StopReason,
                           StreamError, StreamEvent, TextDelta, TextPart, ThinkingDelta,
                           ThinkingPart, ToolArgsDelta, ToolCallPart, ToolCallStart, Usage,
                           UsageUpdate)

_FROM_WIRE: dict[str, StopReason] = {
    "end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
    "tool_use": "tool_use", "pause_turn": "pause", "refusal": "refusal",
    "model_context_window_exceeded": "max_tokens",
}
_TO_WIRE: dict[StopReason, str] = {
    "end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
    "tool_use": "tool_use", "pause": "pause_turn", "refusal": "refusal",
}
_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error",
    "not_found_error", "request_too_large", "rate_limit_error", "api_error", "timeout_error",
    "overloaded_error",
})


def error_type(type: str) -> str:
    """Anthropic's name for an error `type` given in the gateway's (OpenAI's) vocabulary."""
    if type in _ERROR_TYPES:
        return type
    return {"insufficient_quota": "billing_error", "conflict_error": "invalid_request_error",
            }.get(type, "api_error")


def stop_reason(wire: str) -> StopReason:
    return _FROM_WIRE.get(wire, "end_turn")


def usage_from_anthropic(usage: dict[str, Any]) -> Usage:
    """IR usage from Anthropic `usage` (all three input counts added into `input_tokens`).
    Cache writes are split by TTL when `cache_creation` says how (`ephemeral_1h_input_tokens`,
    `ephemeral_5m_input_tokens`); an unsplit `cache_creation_input_tokens` counts as 5-minute
    writes, Anthropic's default TTL."""
    cache_read = count(usage.get("cache_read_input_tokens"))
    split = usage.get("cache_creation")
    split = split if isinstance(split, dict) else {}
    write_1h = count(split.get("ephemeral_1h_input_tokens"))
    cache_write = max(count(usage.get("cache_creation_input_tokens")),
                      count(split.get("ephemeral_5m_input_tokens")) + write_1h)
    details = usage.get("output_tokens_details") or {}
    return Usage(input_tokens=count(usage.get("input_tokens")) + cache_read + cache_write,
                 output_tokens=count(usage.get("output_tokens")),
                 cached_tokens=cache_read,
                 cache_creation_tokens=cache_write,
                 reasoning_tokens=count(details.get("thinking_tokens")),
                 cache_creation_1h_tokens=min(write_1h, cache_write))


usage_from = usage_from_anthropic


def error_in_body(data: dict[str, Any]) -> bool:
    """An Anthropic error body (`{"type": "error", …}`) sent with a 200."""
    return data.get("type") == "error"


def stream_done(event: str | None, data: str) -> bool:
    """The upstream's last event: `message_stop` (relayed, then the stream is over)."""
    return event == "message_stop" or (event is None and '"message_stop"' in data)


def usage_to_anthropic(usage: Usage) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "input_tokens": max(0, usage.input_tokens - usage.cached_tokens
                            - usage.cache_creation_tokens),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }
    if usage.reasoning_tokens:
        wire["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return wire


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic's `input` must be. Arguments that are
    not a JSON object (a model can emit broken JSON) become {} rather than failing the turn."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_arguments(value: Any) -> str:
    """A tool_use `input` object as compact JSON text, non-ASCII kept as is."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False,
                      separators=(",", ":"))


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """The IR of an upstream's non-streamed `message`. Server-side tool blocks are dropped;
    raises UpstreamFailed if `content` is missing."""
    content = body.get("content")
    if not isinstance(content, list):
        raise UpstreamFailed("the upstream returned a message without content")
    parts: list[ContentPart] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(TextPart(block.get("text") or ""))
        elif kind == "thinking":
            parts.append(ThinkingPart(block.get("thinking") or "", block.get("signature") or None))
        elif kind == "redacted_thinking":
            parts.append(RedactedThinkingPart(block.get("data") or ""))
        elif kind == "tool_use":
            parts.append(ToolCallPart(id=block.get("id") or "", name=block.get("name") or "",
                                      arguments=tool_arguments(block.get("input"))))
    reason = body.get("stop_reason")
    usage = body.get("usage")
    return ChatResponse(id=str(body.get("id") or ""), content=tuple(parts),
                        stop_reason=stop_reason(reason) if reason else None,
                        usage=usage_from_anthropic(usage) if isinstance(usage, dict) else Usage(),
                        model=body.get("model"), stop_sequence=body.get("stop_sequence"))


def _block(part: ContentPart) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ThinkingPart):
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": part.data}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": part.id, "name": part.name,
                "input": tool_input(part.arguments)}
    return None


def _default_stop(called_tools: bool) -> StopReason:
    return "tool_use" if called_tools else "end_turn"


def format_response(resp: ChatResponse, *, model: str, request_id: str) -> dict[str, Any]:
    """The `message` body an Anthropic client receives for `resp`."""
    blocks = [b for b in map(_block, resp.content) if b is not None]
    called_tools = any(b["type"] == "tool_use" for b in blocks)
    return {
        "id": prefixed("msg_", request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": _TO_WIRE[resp.stop_reason or _default_stop(called_tools)],
        "stop_sequence": resp.stop_sequence,
        "usage": usage_to_anthropic(resp.usage),
    }


class StreamEncoder:
    """IR stream events -> Anthropic SSE events. Blocks are numbered 0, 1, ... in start order and
    a block is stopped before the next one starts. `message_delta` (stop reason and final usage)
    waits for `finish()`, because an OpenAI upstream reports usage after its finish_reason.
    Usage is always reported; `include_usage` is accepted only for a uniform constructor.
    `message_start` announces the upstream's prompt count, else `prompt_tokens` (the gateway's
    estimate: an OpenAI upstream reports usage only at the end, and clients show context use
    from this number)."""

    def __init__(self, *, model: str, request_id: str, include_usage: bool = True,
                 prompt_tokens: int = 0) -> None:
        self._id = prefixed("msg_", request_id)
        self._prompt_tokens = prompt_tokens
        self._model = model
        self._started = False
        self._blocks: dict[int, int] = {}  # IR block index -> wire index
        self._open: int | None = None  # IR index of the open block
        self._called_tools = False
        self._stop: Stop | None = None
        self._usage = Usage()
        self._closed = False

    def _start(self) -> list[SSEEvent]:
        if self._started:
            return []
        self._started = True
        usage = self._usage if self._usage.input_tokens \
            else Usage(input_tokens=self._prompt_tokens)
        return [("message_start", {"type": "message_start", "message": {
            "id": self._id, "type": "message", "role": "assistant", "content": [],
            "model": self._model, "stop_reason": None, "stop_sequence": None,
            "usage": usage_to_anthropic(usage)}})]

    def _close_open(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        wire, self._open = self._blocks[self._open], None
        return [("content_block_stop", {"type": "content_block_stop", "index": wire})]

    def _open_block(self, index: int, block: dict[str, Any]) -> list[SSEEvent]:
        if index in self._blocks:
            return []
        out = self._close_open()
        self._blocks[index] = len(self._blocks)
        self._open = index
        out.append(("content_block_start", {"type": "content_block_start",
                                             "index": self._blocks[index],
                                             "content_block": block}))
        return out

    def _delta(self, index: int, delta: dict[str, Any]) -> SSEEvent:
        return ("content_block_delta", {"type": "content_block_delta",
                                        "index": self._blocks[index], "delta": delta})

    def feed(self, ev: StreamEvent) -> list[SSEEvent]:
        if self._closed:
            return []
        if isinstance(ev, StreamError):
            return self.error(ev.message, ev.type)
        if isinstance(ev, MessageStart) and ev.usage is not None:
            self._usage = ev.usage
        out = self._start()
        if isinstance(ev, TextDelta):
            out += self._open_block(ev.index, {"type": "text", "text": ""})
            if ev.text:
                out.append(self._delta(ev.index, {"type": "text_delta", "text": ev.text}))
        elif isinstance(ev, (ThinkingDelta, SignatureDelta)):
            out += self._open_block(ev.index, {"type": "thinking", "thinking": "",
                                               "signature": ""})
            if isinstance(ev, ThinkingDelta) and ev.text:
                out.append(self._delta(ev.index, {"type": "thinking_delta",
                                                  "thinking": ev.text}))
            elif isinstance(ev, SignatureDelta) and ev.signature:
                out.append(self._delta(ev.index, {"type": "signature_delta",
                                                  "signature": ev.signature}))
        elif isinstance(ev, RedactedThinking):
            out += self._open_block(ev.index, {"type": "redacted_thinking", "data": ev.data})
        elif isinstance(ev, ToolCallStart):
            self._called_tools = True
            out += self._open_block(ev.index, {"type": "tool_use", "id": ev.id,
                                               "name": ev.name, "input": {}})
        elif isinstance(ev, ToolArgsDelta) and ev.partial_json and ev.index in self._blocks:
            out.append(self._delta(ev.index, {"type": "input_json_delta",
                                              "partial_json": ev.partial_json}))
        elif isinstance(ev, BlockStop) and ev.index == self._open:
            out += self._close_open()
        elif isinstance(ev, Stop):
            self._stop = ev
        elif isinstance(ev, UsageUpdate):
            self._usage = ev.usage
        return out

    def finish(self) -> list[SSEEvent]:
        if self._closed:
            return []
        self._closed = True
        out = self._start() + self._close_open()
        stop = self._stop or Stop(_default_stop(self._called_tools))
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": _TO_WIRE[stop.reason],
                                                "stop_sequence": stop.stop_sequence},
                                      "usage": usage_to_anthropic(self._usage)}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def error(self, message: str, type: str) -> list[SSEEvent]:
        """Anthropic's `error` event; the stream ends there (the SDK raises on it)."""
        if self._closed:
            return []
        self._closed = True
        return [("error", {"type": "error",
                           "error": {"type": error_type(type), "message": message}})]


class StreamDecoder:
    """Anthropic SSE events from an upstream -> IR events. Block indexes are kept as they are.
    Blocks the IR does not carry (server tools, their results) are skipped with their deltas."""

    def __init__(self) -> None:
        self._usage_fields: dict[str, Any] = {}  # Anthropic usage, later values overwrite
        self._skipped: set[int] = set()

    def _usage(self, usage: Any) -> Usage:
        if isinstance(usage, dict):
            self._usage_fields.update({k: v for k, v in usage.items() if v is not None})
        return usage_from_anthropic(self._usage_fields)

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        index = data.get("index")
        if kind == "message_start":
            message = data.get("message") or {}
            return [MessageStart(id=message.get("id"), model=message.get("model"),
                                 usage=self._usage(message.get("usage")))]
        if kind == "content_block_start" and isinstance(index, int):
            return self._block_start(index, data.get("content_block") or {})
        if kind == "content_block_delta" and isinstance(index, int) \
                and index not in self._skipped:
            return self._block_delta(index, data.get("delta") or {})
        if kind == "content_block_stop" and isinstance(index, int) \
                and index not in self._skipped:
            return [BlockStop(index)]
        if kind == "message_delta":
            delta = data.get("delta") or {}
            out: list[StreamEvent] = []
            if delta.get("stop_reason"):
                out.append(Stop(stop_reason(delta["stop_reason"]), delta.get("stop_sequence")))
            if "usage" in data:
                out.append(UsageUpdate(self._usage(data["usage"])))
            return out
        if kind == "error":
            error = data.get("error") or {}
            return [StreamError(str(error.get("message") or "upstream error"),
                                str(error.get("type") or "api_error"))]
        return []  # ping, message_stop, and event types added after this was written

    def _block_start(self, index: int, block: dict[str, Any]) -> list[StreamEvent]:
        kind = block.get("type")
        if kind == "text":
            return [TextDelta(index, block.get("text") or "")]
        if kind == "thinking":
            out: list[StreamEvent] = [ThinkingDelta(index, block.get("thinking") or "")]
            if block.get("signature"):
                out.append(SignatureDelta(index, block["signature"]))
            return out
        if kind == "redacted_thinking":
            return [RedactedThinking(index, block.get("data") or "")]
        if kind == "tool_use":
            out = [ToolCallStart(index, block.get("id") or "", block.get("name") or "")]
            if block.get("input"):
                out.append(ToolArgsDelta(index, tool_arguments(block["input"])))
            return out
        self._skipped.add(index)
        return []

    def finish(self) -> list[StreamEvent]:
        return []

    @staticmethod
    def _block_delta(index: int, delta: dict[str, Any]) -> list[StreamEvent]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(index, delta.get("text") or "")]
        if kind == "input_json_delta":
            return [ToolArgsDelta(index, delta.get("partial_json") or "")]
        if kind == "thinking_delta":
            return [ThinkingDelta(index, delta.get("thinking") or "")]
        if kind == "signature_delta":
            return [SignatureDelta(index, delta.get("signature") or "")]
        return []  # citations_delta and others the IR does not carry


class Passthrough:
    """An Anthropic upstream's events to an Anthropic client as they came, but for the public
    model name in `message_start`. `message_stop` is the upstream's own; a failure is
    Anthropic's `error` event."""

    def __init__(self, *, model: str) -> None:
        self._model = model

    def chunk(self, event: str | None, payload: dict[str, Any]) -> list[SSEEvent]:
        kind = payload.get("type") or event
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            payload["message"]["model"] = self._model
        return [(event or kind, payload)]

    def finish(self) -> list[SSEEvent]:
        return []

    def error(self, message: str, type: str) -> list[SSEEvent]:
        return [("error", {"type": "error", "error": {"type": error_type(type),
                                                      "message": message}})]
