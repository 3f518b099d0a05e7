"""OpenAI Responses API, upstream side: the body for an OpenAI-compatible server marked as
speaking `/v1/responses` (`build_request`, from the IR of a Chat Completions or Messages
client), its `response` object and event stream read back into the IR, and the `Passthrough`
that relays such a stream to a Responses client as it came.

What does not map one to one:
- the system prompt becomes `instructions`; later system turns `developer` messages;
- thinking is not sent back (named "thinking" in what was dropped): Anthropic signatures and
  chat `reasoning_content` are not Responses `encrypted_content`, which the upstream would
  refuse; the reasoning effort follows the route's capability as for Chat Completions;
- tools are `function` tools with `strict` false unless the client said otherwise (the
  Responses API defaults to strict schemas, which ordinary client schemas often fail);
- `store` is false: the gateway keeps the conversation (gateway.surfaces.openai_responses);
- stop sequences have no Responses field and are not sent.
Reading: `message` items -> text, `reasoning` items -> thinking (summary or reasoning text,
`encrypted_content` as the signature), `function_call` / `custom_tool_call` items -> tool calls
(a custom call's text as the one argument `input`); hosted tools' items are not content.
"""
from __future__ import annotations

import json
from typing import Any

from gateway.codecs.fields import count
from gateway.codecs.media import check_media_allowed, data_url
# One reading of the route's reasoning capability for both OpenAI wire formats.
from gateway.codecs.openai_chat import _effort as reasoning_effort
from gateway.codecs.openai_chat import tool_choice_to_openai
from gateway.errors import UpstreamFailed
from gateway.types import (BlockStop, ChatRequest, ChatResponse, CodecOptions, ContentPart,
                           DocumentPart, ImagePart, Message, MessageStart, SignatureDelta,
                           SSEEvent, Stop, StopReason, StreamError, StreamEvent, TextDelta,
                           TextPart, ThinkingDelta, ThinkingPart, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, ToolResultPart, Usage, UsageUpdate)

TOOL_ERROR_PREFIX = "Error: "
_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_INCOMPLETE_TO_STOP: dict[str, StopReason] = {"max_output_tokens": "max_tokens",
                                              "content_filter": "refusal"}


def build_request(req: ChatRequest, *, upstream_model: str, stream: bool,
                  options: CodecOptions, dropped: list[str] | None = None) -> dict[str, Any]:
    """The Responses body for `req`; what it cannot carry is appended to `dropped`. Raises
    InvalidRequest for content the deployment does not accept (see CodecOptions)."""
    check_media_allowed(req, options)
    dropped = [] if dropped is None else dropped
    if req.stop:
        dropped.append("stop")
    body: dict[str, Any] = {"model": upstream_model, "input": _items(req.messages),
                            "store": False}
    if req.system:
        body["instructions"] = "\n\n".join(p.text for p in req.system)
    if req.tools:
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                          "parameters": dict(t.parameters),
                          "strict": bool(t.strict)} for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = tool_choice_to_openai(req.tool_choice, nested=False)
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if (max_tokens := options.clamp_max_tokens(req.max_tokens)) is not None:
        body["max_output_tokens"] = max_tokens
    for key in ("temperature", "top_p", "user"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if effort := reasoning_effort(req, options, dropped):
        body["reasoning"] = {"effort": effort}
    if req.response_format is not None and req.response_format.type != "text":
        rf = req.response_format
        fmt: dict[str, Any] = {"type": rf.type}
        if rf.type == "json_schema":
            fmt.update(name=rf.name or "response", schema=dict(rf.schema or {}))
            if rf.strict is not None:
                fmt["strict"] = rf.strict
            if rf.description:
                fmt["description"] = rf.description
        body["text"] = {"format": fmt}
    if req.metadata:
        body["metadata"] = dict(req.metadata)
    if stream:
        body["stream"] = True
    if "thinking" not in dropped and any(isinstance(p, ThinkingPart) for m in req.messages
                                         for p in m.content):
        dropped.append("thinking")
    return body


def _input_part(part: ContentPart) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, ImagePart):
        out = {"type": "input_image",
               "image_url": part.url or data_url(part.media_type or "", part.data or "")}
        out["detail"] = part.detail or "auto"
        return out
    if isinstance(part, DocumentPart):
        if part.url:
            return {"type": "input_file", "file_url": part.url}
        if part.text is not None:
            return {"type": "input_text", "text": part.text}
        return {"type": "input_file", "filename": part.title or "document",
                "file_data": data_url(part.media_type or "application/pdf", part.data or "")}
    return None


def _items(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "assistant":
            texts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    texts.append({"type": "output_text", "text": part.text})
                elif isinstance(part, ToolCallPart):
                    if texts:
                        items.append({"type": "message", "role": "assistant", "content": texts})
                        texts = []
                    items.append({"type": "function_call", "call_id": part.id,
                                  "name": part.name, "arguments": part.arguments})
            if texts:
                items.append({"type": "message", "role": "assistant", "content": texts})
            continue
        role = "developer" if message.role == "system" else "user"
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ToolResultPart):
                if content:
                    items.append({"type": "message", "role": role, "content": content})
                    content = []
                items.append({"type": "function_call_output", "call_id": part.tool_call_id,
                              "output": _tool_output(part)})
            elif (wire := _input_part(part)) is not None:
                content.append(wire)
        if content:
            items.append({"type": "message", "role": role, "content": content})
    return items


def _tool_output(part: ToolResultPart) -> str | list[dict[str, Any]]:
    prefix = TOOL_ERROR_PREFIX if part.is_error else ""
    if all(isinstance(p, TextPart) for p in part.content):
        return prefix + part.text
    out = [w for p in part.content if (w := _input_part(p)) is not None]
    return ([{"type": "input_text", "text": prefix}] if prefix else []) + out


def usage_from(usage: dict[str, Any]) -> Usage:
    """IR usage from a Responses `usage` object (`input_tokens` includes cached ones)."""
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return Usage(input_tokens=count(usage.get("input_tokens")),
                 output_tokens=count(usage.get("output_tokens")),
                 cached_tokens=count(input_details.get("cached_tokens")),
                 cache_creation_tokens=count(input_details.get("cache_write_tokens")),
                 reasoning_tokens=count(output_details.get("reasoning_tokens")))


def error_in_body(data: dict[str, Any]) -> bool:
    """A `response` that failed, or a 200 carrying only an error."""
    return isinstance(data.get("error"), dict) and (data.get("status") in (None, "failed")
                                                    and not data.get("output"))


def stream_done(event: str | None, data: str) -> bool:
    if event is not None:
        return event in _END_EVENTS
    head = data[:80].replace(" ", "")
    return any(f'"type":"{name}"' in head for name in _END_EVENTS)


def _reasoning_text(item: dict[str, Any]) -> str:
    texts = []
    for key in ("summary", "content"):
        for part in item.get(key) or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return "".join(texts)


def _custom_arguments(text: str) -> str:
    return json.dumps({"input": text}, ensure_ascii=False)


def _stop(data: dict[str, Any], *, called_tools: bool) -> StopReason:
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE_TO_STOP.get(reason, "max_tokens")
    return "tool_use" if called_tools else "end_turn"


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """The IR of a Responses upstream's `response` object; raises UpstreamFailed when it is
    not one."""
    output = body.get("output")
    if not isinstance(output, list):
        raise UpstreamFailed("the upstream returned a response without output")
    content: list[ContentPart] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict):
                    text = part.get("text") if part.get("type") == "output_text" \
                        else part.get("refusal") if part.get("type") == "refusal" else None
                    if isinstance(text, str):
                        content.append(TextPart(text))
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text or item.get("encrypted_content"):
                content.append(ThinkingPart(text, item.get("encrypted_content") or None))
        elif kind == "function_call":
            content.append(ToolCallPart(id=str(item.get("call_id") or item.get("id") or ""),
                                        name=str(item.get("name") or ""),
                                        arguments=item.get("arguments") or "{}"))
        elif kind == "custom_tool_call":
            content.append(ToolCallPart(id=str(item.get("call_id") or item.get("id") or ""),
                                        name=str(item.get("name") or ""),
                                        arguments=_custom_arguments(str(item.get("input") or ""))))
    usage = body.get("usage")
    called = any(isinstance(p, ToolCallPart) for p in content)
    return ChatResponse(id=str(body.get("id") or ""), content=tuple(content),
                        stop_reason=_stop(body, called_tools=called),
                        usage=usage_from(usage) if isinstance(usage, dict) else Usage(),
                        model=body.get("model"))


class StreamDecoder:
    """Responses events from an upstream -> IR events. Each output item is one block (in
    output order): a message's text deltas, a reasoning item's summary or reasoning-text
    deltas (its `encrypted_content`, known at `output_item.done`, as the signature), a
    function call's argument deltas (a custom call's input text as the JSON of `{"input"}`).
    `response.completed` / `response.incomplete` carry the usage and the stop reason;
    `response.failed` and `error` end the stream with a StreamError."""

    def __init__(self) -> None:
        self._started = False
        self._blocks: dict[int, tuple[int, str]] = {}  # output_index -> (IR index, kind)
        self._args_seen: set[int] = set()
        self._open: set[int] = set()
        self._called = False
        self._failed = False

    def _index(self, output_index: int, kind: str) -> tuple[list[StreamEvent], int]:
        if output_index in self._blocks:
            return [], self._blocks[output_index][0]
        index = len(self._blocks)
        self._blocks[output_index] = (index, kind)
        self._open.add(output_index)
        return [], index

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        if self._failed or not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        out: list[StreamEvent] = []
        if not self._started and isinstance(data.get("response"), dict):
            self._started = True
            response = data["response"]
            out.append(MessageStart(id=response.get("id"), model=response.get("model")))
        position = data.get("output_index", 0)
        position = position if isinstance(position, int) else 0
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                _, index = self._index(position, item["type"])
                self._called = True
                out.append(ToolCallStart(index, str(item.get("call_id") or item.get("id") or ""),
                                         str(item.get("name") or "")))
                if item["type"] == "custom_tool_call":
                    out.append(ToolArgsDelta(index, '{"input": "'))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            _, index = self._index(position, "text")
            out.append(TextDelta(index, str(data.get("delta") or "")))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            _, index = self._index(position, "thinking")
            out.append(ThinkingDelta(index, str(data.get("delta") or "")))
        elif kind == "response.function_call_arguments.delta" and position in self._blocks:
            self._args_seen.add(position)
            out.append(ToolArgsDelta(self._blocks[position][0], str(data.get("delta") or "")))
        elif kind == "response.custom_tool_call_input.delta" and position in self._blocks:
            self._args_seen.add(position)
            out.append(ToolArgsDelta(self._blocks[position][0],
                                     json.dumps(str(data.get("delta") or ""),
                                                ensure_ascii=False)[1:-1]))
        elif kind == "response.output_item.done":
            out.extend(self._item_done(position, data.get("item") or {}))
        elif kind in ("response.completed", "response.incomplete"):
            response = data.get("response") or {}
            out.extend(self.finish())
            if isinstance(response.get("usage"), dict):
                out.append(UsageUpdate(usage_from(response["usage"])))
            out.append(Stop(_stop(response, called_tools=self._called)))
        elif kind == "response.failed":
            self._failed = True
            error = (data.get("response") or {}).get("error") or {}
            out.append(StreamError(str(error.get("message") or "the upstream response failed"),
                                   str(error.get("code") or "api_error")))
        elif kind == "error":
            self._failed = True
            out.append(StreamError(str(data.get("message") or "upstream error"),
                                   str(data.get("code") or "api_error")))
        return out

    def _item_done(self, position: int, item: dict[str, Any]) -> list[StreamEvent]:
        kind = item.get("type")
        out: list[StreamEvent] = []
        if kind == "reasoning" and (item.get("encrypted_content") or _reasoning_text(item)
                                    or position in self._blocks):
            streamed = position in self._blocks
            _, index = self._index(position, "thinking")
            if not streamed:
                out.append(ThinkingDelta(index, _reasoning_text(item)))
            if item.get("encrypted_content"):
                out.append(SignatureDelta(index, str(item["encrypted_content"])))
        elif kind in ("function_call", "custom_tool_call") and position in self._blocks:
            index = self._blocks[position][0]
            if position not in self._args_seen:
                if kind == "function_call" and item.get("arguments"):
                    out.append(ToolArgsDelta(index, str(item["arguments"])))
                elif kind == "custom_tool_call" and item.get("input"):
                    out.append(ToolArgsDelta(index, json.dumps(str(item["input"]),
                                                               ensure_ascii=False)[1:-1]))
            if kind == "custom_tool_call":
                out.append(ToolArgsDelta(index, '"}'))
        elif kind == "message" and position not in self._blocks:
            # A server that sends no deltas: the whole text at once.
            text = "".join(str(p.get("text") or p.get("refusal") or "")
                           for p in item.get("content") or [] if isinstance(p, dict))
            if text:
                _, index = self._index(position, "text")
                out.append(TextDelta(index, text))
        if position in self._open:
            self._open.discard(position)
            out.append(BlockStop(self._blocks[position][0]))
        return out

    def finish(self) -> list[StreamEvent]:
        if self._failed:
            return []
        out: list[StreamEvent] = []
        for position in sorted(self._open, key=lambda p: self._blocks[p][0]):
            index, kind = self._blocks[position]
            if kind == "custom_tool_call":
                out.append(ToolArgsDelta(index, '"}'))
            out.append(BlockStop(index))
        self._open.clear()
        return out


class Passthrough:
    """A Responses upstream's events to a Responses client as they came, but for the public
    model name (and `echo`, e.g. the client's `previous_response_id`) in the `response`
    objects. `on_final`, when given, receives the final `response` object (completed or
    incomplete) of the stream. A failure after streaming began is an `error` event, then
    `response.failed`."""

    def __init__(self, *, model: str, on_final=None, echo: dict[str, Any] | None = None) -> None:
        self._model = model
        self._on_final = on_final
        self._echo = echo or {}
        self._seq = 0
        self._response: dict[str, Any] = {}

    def chunk(self, event: str | None, payload: dict[str, Any]) -> list[SSEEvent]:
        response = payload.get("response")
        if isinstance(response, dict):
            response.update(model=self._model, **self._echo)
            self._response = response
            if payload.get("type") in ("response.completed", "response.incomplete") \
                    and self._on_final is not None:
                self._on_final(response)
        if isinstance(payload.get("sequence_number"), int):
            self._seq = payload["sequence_number"] + 1
        return [(event or payload.get("type"), payload)]

    def finish(self) -> list[SSEEvent]:
        return []

    def error(self, message: str, type: str) -> list[SSEEvent]:
        error = {"type": "error", "sequence_number": self._seq, "code": type,
                 "message": message, "param": None}
        failed = {**self._response, "model": self._model, "status": "failed",
                  "error": {"code": "server_error", "message": message}}
        return [("error", error),
                ("response.failed", {"type": "response.failed",
                                     "sequence_number": self._seq + 1, "response": failed})]
