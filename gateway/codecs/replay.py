"""A whole answer as a stream: the IR events a streamed answer with the same content would
carry, and the events of a wire format for an upstream that answered `stream: true` with one
JSON body (some OpenAI-compatible servers do), so the relay reads it as the stream it asked for.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson

from gateway.types import (BlockStop, ChatResponse, MessageStart, RedactedThinking,
                           RedactedThinkingPart, SignatureDelta, Stop, StreamEvent, TextDelta,
                           TextPart, ThinkingDelta, ThinkingPart, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, Usage, UsageUpdate)


def response_events(resp: ChatResponse, *, with_usage: bool = True) -> list[StreamEvent]:
    """The IR stream of `resp`: each part one block (index = its position), then the stop
    reason (tool_use or end_turn when the upstream gave none) and, `with_usage`, its usage."""
    u = resp.usage
    out: list[StreamEvent] = [MessageStart(id=resp.id or None, model=resp.model, usage=Usage(
        input_tokens=u.input_tokens, cached_tokens=u.cached_tokens,
        cache_creation_tokens=u.cache_creation_tokens) if with_usage else None)]
    called_tools = False
    for index, part in enumerate(resp.content):
        if isinstance(part, TextPart):
            out.append(TextDelta(index, part.text))
        elif isinstance(part, ThinkingPart):
            out.append(ThinkingDelta(index, part.text))
            if part.signature:
                out.append(SignatureDelta(index, part.signature))
        elif isinstance(part, RedactedThinkingPart):
            out.append(RedactedThinking(index, part.data))
        elif isinstance(part, ToolCallPart):
            called_tools = True
            out += [ToolCallStart(index, part.id, part.name), ToolArgsDelta(index, part.arguments)]
        else:
            continue
        out.append(BlockStop(index))
    out.append(Stop(resp.stop_reason or ("tool_use" if called_tools else "end_turn"),
                    resp.stop_sequence))
    if with_usage:
        out.append(UsageUpdate(u))
    return out


def whole_body_events(codec: ModuleType, data: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The (event, data) SSE pairs `codec`'s wire format streams for the answer `data`, as an
    upstream of that format would have sent them (its own end marker included); an error
    body becomes the format's in-band error event. Raises the codec's UpstreamFailed for a
    body that is not an answer."""
    model = str(data.get("model") or "")
    encoder = codec.StreamEncoder(model=model, request_id=str(data.get("id") or ""))
    if codec.error_in_body(data):
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        wire = encoder.error(str(error.get("message") or "upstream error"),
                             str(error.get("type") or "api_error"))
    else:
        resp = codec.parse_response(data)
        wire = []
        for ev in response_events(resp, with_usage=isinstance(data.get("usage"), dict)):
            wire.extend(encoder.feed(ev))
        wire.extend(encoder.finish())
    return [(name, payload if isinstance(payload, str) else orjson.dumps(payload).decode())
            for name, payload in wire]
