"""OpenAI Responses API, output side: the `response` object and its streamed events, written for
a Responses client from the IR of an upstream of another dialect (a Responses upstream's own
answer is passed through, see `openai_responses_upstream`).

Mapping from IR content: adjacent text becomes one `message` item, each tool call a
`function_call` item, each thinking block a `reasoning` item whose summary is the thinking text
and whose `encrypted_content` is the thinking signature (so a client that replays output items
gives Anthropic back its signed thinking). Redacted thinking has no Responses form and is omitted.
A `max_tokens` stop makes the response "incomplete" (reason max_output_tokens), a refusal too
(reason content_filter). A call of a flattened namespace tool comes back under its own name with
`namespace`; a call of a `custom` tool as a `custom_tool_call` with the `input` text.
"""
from __future__ import annotations

import json
import time
from typing import Any

from gateway.codecs.ids import prefixed
from gateway.codecs.openai_chat import tool_choice_to_openai
from gateway.types import (BlockStop, ChatRequest, ChatResponse, SignatureDelta, SSEEvent, Stop,
                           StopReason, StreamError, StreamEvent, TextDelta, TextPart,
                           ThinkingDelta, ThinkingPart, Tool, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, Usage, UsageUpdate)

_INCOMPLETE: dict[StopReason, str] = {"max_tokens": "max_output_tokens",
                                      "refusal": "content_filter"}


def usage_to_responses(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                 "cache_write_tokens": usage.cache_creation_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _request_echo(req: ChatRequest | None) -> dict[str, Any]:
    """The request parameters a `response` object repeats back."""
    if req is None:
        return {"instructions": None, "max_output_tokens": None, "parallel_tool_calls": True,
                "temperature": None, "top_p": None, "tool_choice": "auto", "tools": [],
                "reasoning": None, "metadata": {}, "user": None,
                "text": {"format": {"type": "text"}}}
    choice = "auto" if req.tool_choice is None else \
        tool_choice_to_openai(req.tool_choice, nested=False)
    text_format: dict[str, Any] = {"type": "text"}
    if req.response_format is not None:
        rf = req.response_format
        text_format = {"type": rf.type}
        if rf.type == "json_schema":
            text_format.update({"name": rf.name or "response", "schema": dict(rf.schema or {}),
                                "strict": rf.strict, "description": rf.description})
    return {
        "instructions": "\n\n".join(p.text for p in req.system) or None,
        "max_output_tokens": req.max_tokens,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": choice,
        "tools": [_tool_echo(t) for t in req.tools],
        "reasoning": {"effort": req.reasoning.effort, "summary": None} if req.reasoning else None,
        "metadata": dict(req.metadata),
        "user": req.user,
        "text": {"format": text_format},
    }


def _tool_echo(t: Tool) -> dict[str, Any]:
    if t.custom:
        return {"type": "custom", "name": t.name, "description": t.description}
    out = {"type": "function", "name": t.original or t.name, "description": t.description,
           "parameters": dict(t.parameters), "strict": t.strict}
    if t.namespace:
        out["namespace"] = t.namespace
    return out


def _tool_of(request: ChatRequest | None, name: str) -> Tool | None:
    if request is not None:
        for tool in request.tools:
            if tool.name == name and (tool.custom or tool.namespace):
                return tool
    return None


def custom_input(arguments: str) -> str:
    """The text of a custom tool's call from the one-argument JSON the upstream produced."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def _response_object(*, id: str, model: str, created: int, status: str,
                     output: list[dict[str, Any]], usage: Usage | None,
                     request: ChatRequest | None, stop: StopReason | None = None,
                     error: dict[str, Any] | None = None) -> dict[str, Any]:
    reason = _INCOMPLETE.get(stop) if stop else None
    if reason and status == "completed":
        status = "incomplete"
    return {
        "id": id, "object": "response", "created_at": created, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": model, "output": output, "previous_response_id": None, "store": False,
        "truncation": "disabled",
        "usage": usage_to_responses(usage) if usage is not None else None,
        **_request_echo(request),
    }


def _message_item(id: str, texts: list[str], status: str) -> dict[str, Any]:
    return {"id": id, "type": "message", "role": "assistant", "status": status,
            "content": [_text_part(t) for t in texts]}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(id: str, text: str, signature: str | None, status: str) -> dict[str, Any]:
    return {"id": id, "type": "reasoning", "status": status,
            "summary": [{"type": "summary_text", "text": text}] if text else [],
            "encrypted_content": signature or None}


def _call_item(id: str, call_id: str, name: str, arguments: str, status: str,
               tool: Tool | None = None) -> dict[str, Any]:
    """A `function_call` item, or the client's own shape of a translated tool's call."""
    if tool is not None and tool.custom:
        return {"id": id, "type": "custom_tool_call",
                "status": status, "call_id": call_id, "name": name,
                "input": custom_input(arguments)}
    item = {"id": id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}
    if tool is not None and tool.namespace:
        item.update(name=tool.original, namespace=tool.namespace)
    return item


def format_response(resp: ChatResponse, *, model: str, request_id: str,
                    request: ChatRequest | None = None, created: int | None = None,
                    echo: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `response` object a Responses client receives for `resp`; `request`, when given, is
    echoed in it as the real API does, `echo` (e.g. `store`, `previous_response_id`) over
    it."""
    output: list[dict[str, Any]] = []
    for part in resp.content:
        n = len(output)
        if isinstance(part, TextPart):
            if output and output[-1]["type"] == "message":
                output[-1]["content"].append(_text_part(part.text))
            else:
                output.append(_message_item(f"msg_{request_id}_{n}", [part.text], "completed"))
        elif isinstance(part, ThinkingPart):
            output.append(_reasoning_item(f"rs_{request_id}_{n}", part.text, part.signature,
                                          "completed"))
        elif isinstance(part, ToolCallPart):
            output.append(_call_item(f"fc_{request_id}_{n}", part.id, part.name, part.arguments,
                                     "completed", _tool_of(request, part.name)))
    return {**_response_object(id=prefixed("resp_", request_id), model=model,
                               created=int(time.time()) if created is None else created,
                               status="completed", output=output, usage=resp.usage,
                               request=request, stop=resp.stop_reason), **(echo or {})}


class _Item:
    """One output item being streamed."""
    __slots__ = ("kind", "id", "output_index", "text", "signature", "call_id", "name",
                 "has_part", "done", "tool")

    def __init__(self, kind: str, id: str, output_index: int) -> None:
        self.kind, self.id, self.output_index = kind, id, output_index
        self.text = self.signature = self.call_id = self.name = ""
        self.has_part = False  # a content/summary part was announced
        self.done = False
        self.tool: Tool | None = None

    def body(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return _message_item(self.id, [self.text] if self.has_part else [], status)
        if self.kind == "reasoning":
            return _reasoning_item(self.id, self.text, self.signature, status)
        return _call_item(self.id, self.call_id, self.name, self.text, status, self.tool)


class StreamEncoder:
    """IR stream events -> Responses API SSE events (`event:` equal to each payload's `type`,
    `sequence_number` counting from 0): response.created, response.in_progress, the items'
    added/delta/done events one item after another, then response.completed (or
    response.incomplete) carrying the whole response with usage. Usage is always reported;
    `include_usage` is accepted only for a uniform constructor. `request`, when given, is
    echoed in the response objects as the real API does, `echo` over it; `on_final`, when
    given, receives the final response object of a stream that completed."""

    def __init__(self, *, model: str, request_id: str, include_usage: bool = True,
                 request: ChatRequest | None = None, created: int | None = None,
                 echo: dict[str, Any] | None = None, on_final=None) -> None:
        self._echo = echo or {}
        self._on_final = on_final
        self._id = prefixed("resp_", request_id)
        self._request_id = request_id
        self._model = model
        self._request = request
        self._created = int(time.time()) if created is None else created
        self._seq = 0
        self._started = False
        self._items: dict[int, _Item] = {}  # IR block index -> item
        self._open: int | None = None
        self._stop: StopReason | None = None
        self._usage = Usage()
        self._closed = False

    def _event(self, type: str, **fields: Any) -> SSEEvent:
        payload = {"type": type, "sequence_number": self._seq, **fields}
        self._seq += 1
        return (type, payload)

    def _response(self, status: str, *, final: bool,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        items = sorted(self._items.values(), key=lambda i: i.output_index)
        output = [i.body("completed" if i.done else "incomplete") for i in items] if final else []
        return {**_response_object(id=self._id, model=self._model, created=self._created,
                                   status=status, output=output,
                                   usage=self._usage if final else None, request=self._request,
                                   stop=self._stop if status == "completed" else None,
                                   error=error), **self._echo}

    def _start(self) -> list[SSEEvent]:
        if self._started:
            return []
        self._started = True
        return [self._event("response.created", response=self._response("in_progress",
                                                                          final=False)),
                self._event("response.in_progress", response=self._response("in_progress",
                                                                              final=False))]

    def _add(self, index: int, kind: str, prefix: str) -> tuple[list[SSEEvent], _Item]:
        if index in self._items:
            return [], self._items[index]
        out = self._close_open()
        n = len(self._items)
        item = self._items[index] = _Item(kind, f"{prefix}_{self._request_id}_{n}", n)
        self._open = index
        return out, item

    def _announce(self, item: _Item) -> SSEEvent:
        return self._event("response.output_item.added", output_index=item.output_index,
                           item=item.body("in_progress"))

    def _announce_part(self, item: _Item) -> list[SSEEvent]:
        if item.has_part:
            return []
        item.has_part = True
        if item.kind == "message":
            return [self._event("response.content_part.added", item_id=item.id,
                                output_index=item.output_index, content_index=0,
                                part=_text_part(""))]
        return [self._event("response.reasoning_summary_part.added", item_id=item.id,
                            output_index=item.output_index, summary_index=0,
                            part={"type": "summary_text", "text": ""})]

    def feed(self, ev: StreamEvent) -> list[SSEEvent]:
        if self._closed:
            return []
        if isinstance(ev, StreamError):
            return self.error(ev.message, ev.type)
        out = self._start()
        if isinstance(ev, TextDelta):
            out += self._text(ev.index, ev.text)
        elif isinstance(ev, ThinkingDelta):
            out += self._thinking(ev.index, ev.text)
        elif isinstance(ev, SignatureDelta):
            out += self._thinking(ev.index, "")
            self._items[ev.index].signature += ev.signature
        elif isinstance(ev, ToolCallStart) and ev.index not in self._items:
            out_add, item = self._add(ev.index, "function_call", "fc")
            item.call_id, item.name = ev.id, ev.name
            item.tool = _tool_of(self._request, ev.name)
            out += [*out_add, self._announce(item)]
        elif isinstance(ev, ToolArgsDelta) and ev.index in self._items and ev.partial_json:
            item = self._items[ev.index]
            item.text += ev.partial_json
            if item.tool is not None and item.tool.custom:
                return out  # its text is known only once the JSON is whole (at done)
            out.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                   output_index=item.output_index, delta=ev.partial_json))
        elif isinstance(ev, BlockStop) and ev.index == self._open:
            out += self._close_open()
        elif isinstance(ev, Stop):
            self._stop = ev.reason
        elif isinstance(ev, UsageUpdate):
            self._usage = ev.usage
        return out

    def _text(self, index: int, text: str) -> list[SSEEvent]:
        out, item = self._add(index, "message", "msg")
        if not item.has_part:
            out += [self._announce(item), *self._announce_part(item)]
        if text:
            item.text += text
            out.append(self._event("response.output_text.delta", item_id=item.id,
                                   output_index=item.output_index, content_index=0,
                                   delta=text, logprobs=[]))
        return out

    def _thinking(self, index: int, text: str) -> list[SSEEvent]:
        known = index in self._items
        out, item = self._add(index, "reasoning", "rs")
        if not known:
            out.append(self._announce(item))
        if text:
            out += self._announce_part(item)
            item.text += text
            out.append(self._event("response.reasoning_summary_text.delta", item_id=item.id,
                                   output_index=item.output_index, summary_index=0,
                                   delta=text))
        return out

    def _close_open(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        item, self._open = self._items[self._open], None
        item.done = True
        where = {"item_id": item.id, "output_index": item.output_index}
        out: list[SSEEvent] = []
        if item.kind == "message":
            out += [self._event("response.output_text.done", **where, content_index=0,
                                text=item.text, logprobs=[]),
                    self._event("response.content_part.done", **where, content_index=0,
                                part=_text_part(item.text))]
        elif item.kind == "reasoning" and item.has_part:
            out += [self._event("response.reasoning_summary_text.done", **where,
                                summary_index=0, text=item.text),
                    self._event("response.reasoning_summary_part.done", **where,
                                summary_index=0,
                                part={"type": "summary_text", "text": item.text})]
        elif item.kind == "function_call" and item.tool is not None and item.tool.custom:
            text = custom_input(item.text)
            out += [self._event("response.custom_tool_call_input.delta", **where, delta=text),
                    self._event("response.custom_tool_call_input.done", **where, input=text)]
        elif item.kind == "function_call":
            out.append(self._event("response.function_call_arguments.done", **where,
                                   arguments=item.text))
        out.append(self._event("response.output_item.done", output_index=item.output_index,
                               item=item.body("completed")))
        return out

    def finish(self) -> list[SSEEvent]:
        if self._closed:
            return []
        self._closed = True
        out = self._start() + self._close_open()
        response = self._response("completed", final=True)
        kind = "response.incomplete" if response["status"] == "incomplete" \
            else "response.completed"
        out.append(self._event(kind, response=response))
        if self._on_final is not None:
            self._on_final(response)
        return out

    def error(self, message: str, type: str) -> list[SSEEvent]:
        """An `error` event, then `response.failed` with what was produced so far."""
        if self._closed:
            return []
        out = self._start()
        self._closed = True
        out.append(self._event("error", code=type, message=message, param=None))
        code = "rate_limit_exceeded" if type == "rate_limit_error" else "server_error"
        out.append(self._event("response.failed", response=self._response(
            "failed", final=True, error={"code": code, "message": message})))
        return out
