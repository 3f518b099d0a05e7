"""OpenAI Chat Completions, output side: completion bodies and `chat.completion.chunk` streams.

Both directions live here: `parse_response`/`StreamDecoder` read what an OpenAI-compatible
upstream returned, `format_response`/`StreamEncoder` write what an OpenAI client expects.
Reasoning has no official field in this API; we read the de-facto ones (`reasoning_content`
from DeepSeek/Kimi/vLLM, `reasoning` from OpenRouter/Ollama) and write `reasoning_content`, which
the official SDK tolerates as an extra field.
"""
from __future__ import annotations

import time
from typing import Any

from gateway.codecs.fields import count
from gateway.codecs.ids import new_tool_call_id, prefixed
from gateway.errors import UpstreamFailed
from gateway.types import (BlockStop, ChatResponse, ContentPart, MessageStart, SSEEvent, Stop,
                           StopReason, StreamError, StreamEvent, TextDelta, TextPart,
                           ThinkingDelta, ThinkingPart, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, Usage, UsageUpdate)

_FINISH_TO_STOP: dict[str, StopReason] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}
_STOP_TO_FINISH: dict[StopReason, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause": "stop", "max_tokens": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}


def stop_reason(finish_reason: str, *, called_tools: bool) -> StopReason:
    """The IR stop reason for an OpenAI `finish_reason`. Some OpenAI-compatible servers (older
    vLLM, Ollama) say "stop" after tool calls; a client must still see tool_use to run them."""
    if called_tools and finish_reason == "stop":
        return "tool_use"
    return _FINISH_TO_STOP.get(finish_reason, "end_turn")


def finish_reason(reason: StopReason | None, *, called_tools: bool) -> str:
    if reason is None:
        return "tool_calls" if called_tools else "stop"
    return _STOP_TO_FINISH[reason]


def usage_from_openai(usage: dict[str, Any]) -> Usage:
    """IR usage from an OpenAI `usage` object; `prompt_tokens` already includes cached ones.
    DeepSeek reports cache hits as `prompt_cache_hit_tokens` instead of the details object.
    Audio tokens (OpenAI's audio models) and image tokens (xAI) are parts of the prompt and
    completion counts, as in the IR."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=count(usage.get("prompt_tokens")),
        output_tokens=count(usage.get("completion_tokens")),
        cached_tokens=count(prompt_details.get("cached_tokens"))
        or count(usage.get("prompt_cache_hit_tokens")),
        cache_creation_tokens=count(prompt_details.get("cache_write_tokens")),
        reasoning_tokens=count(completion_details.get("reasoning_tokens")),
        audio_input_tokens=count(prompt_details.get("audio_tokens")),
        audio_output_tokens=count(completion_details.get("audio_tokens")),
        image_input_tokens=count(prompt_details.get("image_tokens")),
    )


def usage_to_openai(usage: Usage) -> dict[str, Any]:
    prompt_details: dict[str, int] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_creation_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_creation_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


usage_from = usage_from_openai


def error_in_body(data: dict[str, Any]) -> bool:
    """Some upstreams answer 200 with `{"error": …}` instead of a completion."""
    return isinstance(data.get("error"), dict) and not data.get("choices")


def stream_done(event: str | None, data: str) -> bool:
    """The upstream's end-of-stream marker: the literal `[DONE]`."""
    return data == "[DONE]"


def _reasoning_text(message: dict[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _content_text(content: Any) -> str:
    """Message content as text; a few servers return a list of text parts instead of a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "output_text"))
    return ""


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """The IR of an upstream's non-streamed `chat.completion`; raises UpstreamFailed if it has
    no choice to read."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamFailed("the upstream returned a completion without choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    parts: list[ContentPart] = []
    if reasoning := _reasoning_text(message):
        parts.append(ThinkingPart(reasoning))
    if text := _content_text(message.get("content")) or _content_text(choice.get("text")):
        parts.append(TextPart(text))  # `text`: a legacy completions body
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(TextPart(message["refusal"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(ToolCallPart(id=call.get("id") or new_tool_call_id(),
                                  name=function.get("name") or "",
                                  arguments=function.get("arguments") or "{}"))
    called_tools = any(isinstance(p, ToolCallPart) for p in parts)
    reason = choice.get("finish_reason")
    usage = body.get("usage")
    return ChatResponse(
        id=str(body.get("id") or ""),
        content=tuple(parts),
        stop_reason=stop_reason(reason, called_tools=called_tools) if reason else None,
        usage=usage_from_openai(usage) if isinstance(usage, dict) else Usage(),
        model=body.get("model"),
    )


def format_response(resp: ChatResponse, *, model: str, request_id: str,
                    created: int | None = None) -> dict[str, Any]:
    """The `chat.completion` body an OpenAI client receives for `resp`."""
    text = "".join(p.text for p in resp.content if isinstance(p, TextPart))
    reasoning = "".join(p.text for p in resp.content if isinstance(p, ThinkingPart))
    calls = [p for p in resp.content if isinstance(p, ToolCallPart)]
    message: dict[str, Any] = {"role": "assistant",
                               "content": text if text or not calls else None,
                               "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    return {
        "id": prefixed("chatcmpl-", request_id),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(resp.stop_reason, called_tools=bool(calls))}],
        "usage": usage_to_openai(resp.usage),
    }


class StreamEncoder:
    """IR stream events -> `chat.completion.chunk` SSE payloads (no `event:` names), ending with
    a usage chunk with empty `choices` (when `include_usage`) and the literal "[DONE]"."""

    def __init__(self, *, model: str, request_id: str, include_usage: bool = True,
                 created: int | None = None) -> None:
        self._id = prefixed("chatcmpl-", request_id)
        self._model = model
        self._created = int(time.time()) if created is None else created
        self._include_usage = include_usage
        self._started = False
        self._tool_slots: dict[int, int] = {}  # IR block index -> position in tool_calls
        self._finished_choice = False
        self._usage = Usage()
        self._closed = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> SSEEvent:
        return (None, {"id": self._id, "object": "chat.completion.chunk",
                       "created": self._created, "model": self._model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}]})

    def _start(self) -> list[SSEEvent]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, ev: StreamEvent) -> list[SSEEvent]:
        if self._closed:
            return []
        if isinstance(ev, StreamError):
            return self.error(ev.message, ev.type)
        if isinstance(ev, UsageUpdate):
            self._usage = ev.usage
            return []
        out = self._start()
        if isinstance(ev, TextDelta) and ev.text:
            out.append(self._chunk({"content": ev.text}))
        elif isinstance(ev, ThinkingDelta) and ev.text:
            out.append(self._chunk({"reasoning_content": ev.text}))
        elif isinstance(ev, ToolCallStart) and ev.index not in self._tool_slots:
            slot = self._tool_slots[ev.index] = len(self._tool_slots)
            out.append(self._chunk({"tool_calls": [{
                "index": slot, "id": ev.id, "type": "function",
                "function": {"name": ev.name, "arguments": ""}}]}))
        elif isinstance(ev, ToolArgsDelta) and ev.partial_json and ev.index in self._tool_slots:
            out.append(self._chunk({"tool_calls": [{
                "index": self._tool_slots[ev.index],
                "function": {"arguments": ev.partial_json}}]}))
        elif isinstance(ev, Stop) and not self._finished_choice:
            self._finished_choice = True
            out.append(self._chunk({}, finish_reason(ev.reason,
                                                     called_tools=bool(self._tool_slots))))
        # MessageStart, SignatureDelta, RedactedThinking and BlockStop have no chunk of their own.
        return out

    def finish(self) -> list[SSEEvent]:
        if self._closed:
            return []
        out = self._start()
        if not self._finished_choice:
            self._finished_choice = True
            out.append(self._chunk({}, finish_reason(None, called_tools=bool(self._tool_slots))))
        if self._include_usage:
            out.append((None, {"id": self._id, "object": "chat.completion.chunk",
                               "created": self._created, "model": self._model, "choices": [],
                               "usage": usage_to_openai(self._usage)}))
        out.append((None, "[DONE]"))
        self._closed = True
        return out

    def error(self, message: str, type: str) -> list[SSEEvent]:
        """OpenAI's mid-stream error payload (the SDK raises APIError on it), then "[DONE]"."""
        if self._closed:
            return []
        self._closed = True
        return [(None, {"error": {"message": message, "type": type, "param": None,
                                  "code": None}}),
                (None, "[DONE]")]


class StreamDecoder:
    """`chat.completion.chunk` payloads from an OpenAI-compatible upstream -> IR events.

    Reads choice 0 only. Text, reasoning and each tool call become their own blocks, numbered in
    the order they start; a tool call's block starts once its name is known. Usage may arrive in
    its own chunk (empty `choices`) or alongside `finish_reason`. An `error` payload ends the
    stream. `finish()` closes an open block; it emits no `Stop` if the upstream never sent a
    `finish_reason`, leaving it to the caller to tell a cut stream from a complete one.
    """

    def __init__(self) -> None:
        self._started = False
        self._next_index = 0
        self._open: tuple[int, str] | None = None  # (IR index, "text" | "thinking" | "tool")
        self._tools: dict[int, int] = {}  # upstream tool_calls index -> IR index
        self._pending: dict[int, dict[str, str]] = {}  # tool fragments before the name arrives
        self._stopped = False
        self._usage: Usage | None = None
        self._failed = False  # an error event ended the stream

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        if self._failed or not isinstance(data, dict):
            return []
        error = data.get("error")
        if error:
            self._failed = True
            if isinstance(error, dict):
                return [StreamError(str(error.get("message") or "upstream error"),
                                    str(error.get("type") or "api_error"))]
            return [StreamError(str(error))]
        out: list[StreamEvent] = []
        # Azure opens with an anonymous chunk (no id, no choices) carrying only filter results.
        if not self._started and (data.get("id") or data.get("choices")):
            self._started = True
            out.append(MessageStart(id=data.get("id"), model=data.get("model")))
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        usage = data.get("usage")
        if isinstance(usage, dict):
            parsed = usage_from_openai(usage)
            if parsed != self._usage:
                self._usage = parsed
                out.append(UsageUpdate(parsed))
        return out

    def finish(self) -> list[StreamEvent]:
        if self._failed:
            return []
        out: list[StreamEvent] = []
        for upstream_index in sorted(self._pending):
            out.extend(self._start_tool(upstream_index, force=True))
        out.extend(self._close())
        return out

    def _close(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        index, self._open = self._open[0], None
        return [BlockStop(index)]

    def _block(self, kind: str) -> tuple[list[StreamEvent], int]:
        """Continue the open text or thinking block of `kind`, or close the open block and start
        a new one (always, for a tool call)."""
        if self._open is not None and self._open[1] == kind and kind != "tool":
            return [], self._open[0]
        out = self._close()
        self._open = (self._next_index, kind)
        self._next_index += 1
        return out, self._open[0]

    def _choice(self, choice: dict[str, Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if reasoning := _reasoning_text(delta):
            stops, index = self._block("thinking")
            out += [*stops, ThinkingDelta(index, reasoning)]
        # `text`: a legacy completions chunk (/v1/completions), read by the same decoder.
        for source, key in ((delta, "content"), (delta, "refusal"), (choice, "text")):
            if isinstance(source.get(key), str) and source[key]:
                stops, index = self._block("text")
                out += [*stops, TextDelta(index, source[key])]
        for position, call in enumerate(delta.get("tool_calls") or []):
            if isinstance(call, dict):
                out.extend(self._tool_fragment(call.get("index", position), call))
        if choice.get("finish_reason"):
            out.extend(self.finish())
            if not self._stopped:
                self._stopped = True
                out.append(Stop(stop_reason(choice["finish_reason"],
                                            called_tools=bool(self._tools))))
        return out

    def _tool_fragment(self, upstream_index: int, call: dict[str, Any]) -> list[StreamEvent]:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments") or ""
        if upstream_index in self._tools:
            # Later fragments repeat nothing but arguments (some servers resend the id).
            return [ToolArgsDelta(self._tools[upstream_index], arguments)] if arguments else []
        pending = self._pending.setdefault(upstream_index, {"id": "", "name": "", "args": ""})
        pending["id"] = pending["id"] or call.get("id") or ""
        pending["name"] += function.get("name") or ""
        pending["args"] += arguments
        return self._start_tool(upstream_index, force=False)

    def _start_tool(self, upstream_index: int, *, force: bool) -> list[StreamEvent]:
        pending = self._pending[upstream_index]
        if not pending["name"] and not force:
            return []
        del self._pending[upstream_index]
        out, index = self._block("tool")
        self._tools[upstream_index] = index
        out.append(ToolCallStart(index, pending["id"] or new_tool_call_id(), pending["name"]))
        if pending["args"]:
            out.append(ToolArgsDelta(index, pending["args"]))
        return out


class Passthrough:
    """An OpenAI-compatible upstream's chunks to an OpenAI client (Chat Completions or legacy
    completions) as they came, but for the public model name; the usage chunk (which the
    gateway always asks for) only when the client asked for it. Ends with "[DONE]"; a failure
    is OpenAI's error payload, then "[DONE]"."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage

    def chunk(self, event: str | None, payload: dict[str, Any]) -> list[SSEEvent]:
        if not payload.get("choices") and not self._include_usage:
            return []
        if not self._include_usage:
            payload.pop("usage", None)
        payload["model"] = self._model
        return [(None, payload)]

    def finish(self) -> list[SSEEvent]:
        return [(None, "[DONE]")]

    def error(self, message: str, type: str) -> list[SSEEvent]:
        code = "upstream_timeout" if type == "timeout_error" else "upstream_error"
        return [(None, {"error": {"message": message, "type": "api_error", "param": None,
                                  "code": code}}),
                (None, "[DONE]")]
