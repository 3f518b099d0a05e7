"""OpenAI Responses API: the client surface of `/v1/responses`. There is no upstream of this
dialect; requests reach chat-completions or Anthropic upstreams through the IR. The `response`
object and its events live in `openai_responses_output` and are re-exported here.

The gateway keeps no state, so `previous_response_id`, conversations, stored prompts and item
references are refused; clients send the whole conversation in `input`. Only function tools
are carried. Input items map as: messages -> turns ("system"/"developer" ones at the start ->
the system prompt), `reasoning` -> thinking (summary text, `encrypted_content` as signature),
`function_call` -> a tool call of the assistant turn, `function_call_output` -> a tool result.
"""
from __future__ import annotations

from typing import Any

from gateway.codecs import fields as f
from gateway.codecs.media import image_from_url, parse_data_url
from gateway.codecs.openai_chat import tool_choice_from_openai
from gateway.codecs.openai_responses_output import StreamEncoder, format_response, \
    usage_to_responses
from gateway.errors import InvalidRequest
from gateway.types import (ChatRequest, ContentPart, DocumentPart, ImagePart, Message, Reasoning,
                           ResponseFormat, TextPart, ThinkingPart, Tool, ToolCallPart,
                           ToolResultPart)

__all__ = ["parse_request", "format_response", "StreamEncoder", "usage_to_responses"]

_KNOWN = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "reasoning", "text", "stream", "user",
    "metadata",
})
_STATEFUL = {
    "previous_response_id": "'previous_response_id' (this gateway stores no responses; send "
                            "the whole conversation in 'input')",
    "conversation": "'conversation' (send the whole conversation in 'input')",
    "prompt": "stored prompts ('prompt')",
}


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """A Responses request body -> ChatRequest; InvalidRequest names the bad field."""
    f.as_object(body, "body")
    model = f.req_str(body, "model")
    for key, what in _STATEFUL.items():
        if body.get(key) is not None:
            raise f.unsupported(key, what)
    if body.get("input") is None:
        raise InvalidRequest("'input' is required", param="input")
    system, messages = _input(body["input"])
    if instructions := f.opt_str(body, "instructions"):
        system = (TextPart(instructions), *system)
    reasoning = f.opt_object(body, "reasoning") or {}
    effort = f.opt_str(reasoning, "effort", "reasoning")
    text = f.opt_object(body, "text") or {}
    return ChatRequest(
        model=model,
        messages=messages,
        surface="openai_responses",
        system=system,
        tools=_tools(body),
        tool_choice=tool_choice_from_openai(body.get("tool_choice"), nested=False),
        parallel_tool_calls=f.opt_bool(body, "parallel_tool_calls"),
        max_tokens=f.opt_int(body, "max_output_tokens", minimum=1),
        temperature=f.opt_number(body, "temperature", minimum=0, maximum=2),
        top_p=f.opt_number(body, "top_p", minimum=0, maximum=1),
        stream=bool(f.opt_bool(body, "stream")),
        reasoning=Reasoning(effort=effort) if effort else None,
        response_format=_text_format(f.opt_object(text, "format", "text")),
        user=f.opt_str(body, "user"),
        metadata=f.str_map(body, "metadata"),
        extra={k: v for k, v in body.items() if k not in _KNOWN},
    )


def _input(value: Any) -> tuple[tuple[TextPart, ...], tuple[Message, ...]]:
    if isinstance(value, str):
        return (), (Message("user", (TextPart(value),)),)
    system: list[TextPart] = []
    messages: list[Message] = []

    def add(role: str, parts: tuple[ContentPart, ...], *, merge: bool) -> None:
        if merge and messages and messages[-1].role == role:
            messages[-1] = Message(role, (*messages[-1].content, *parts))  # type: ignore[arg-type]
        else:
            messages.append(Message(role, parts))  # type: ignore[arg-type]

    for i, raw in enumerate(f.as_list(value, "input")):
        p = f.join("input", i)
        item = f.as_object(raw, p)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = f.req_str(item, "role", p)
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"unknown role '{role}'", param=f.join(p, "role"))
            parts = _content(item.get("content"), f.join(p, "content"))
            if role in ("system", "developer"):
                if messages:
                    add("system", parts, merge=False)
                else:
                    system.extend(x for x in parts if isinstance(x, TextPart))
            else:
                # An assistant message continues the turn its reasoning/calls started.
                add(role, parts, merge=role == "assistant")
        elif kind == "function_call":
            add("assistant", (ToolCallPart(id=f.req_str(item, "call_id", p),
                                           name=f.req_str(item, "name", p),
                                           arguments=f.opt_str(item, "arguments", p) or "{}"),),
                merge=True)
        elif kind == "function_call_output":
            result = ToolResultPart(tool_call_id=f.req_str(item, "call_id", p),
                                    content=_output(item.get("output"), f.join(p, "output")))
            last = messages[-1] if messages else None
            add("user", (result,), merge=bool(last) and all(
                isinstance(x, ToolResultPart) for x in last.content))  # type: ignore[union-attr]
        elif kind == "reasoning":
            add("assistant", (_reasoning(item, p),), merge=True)
        else:
            raise f.unsupported(f.join(p, "type"), f"input item type '{kind}'")
    return tuple(system), tuple(messages)


def _content(value: Any, p: str) -> tuple[ContentPart, ...]:
    if isinstance(value, str):
        return (TextPart(value),)
    parts: list[ContentPart] = []
    for i, raw in enumerate(f.as_list(value, p)):
        pp = f.join(p, i)
        part = f.as_object(raw, pp)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(TextPart(f.req_str(part, "text", pp)))
        elif kind == "refusal":
            parts.append(TextPart(f.req_str(part, "refusal", pp)))
        elif kind == "input_image":
            parts.append(_image(part, pp))
        elif kind == "input_file":
            parts.append(_file(part, pp))
        else:
            raise f.unsupported(f.join(pp, "type"), f"content part type '{kind}'")
    return tuple(parts)


def _image(part: dict[str, Any], p: str) -> ImagePart:
    if part.get("file_id") is not None:
        raise f.unsupported(f.join(p, "file_id"), "uploaded file ids")
    return image_from_url(f.req_str(part, "image_url", p), detail=f.opt_str(part, "detail", p),
                          param=f.join(p, "image_url"))


def _file(part: dict[str, Any], p: str) -> DocumentPart:
    if part.get("file_id") is not None:
        raise f.unsupported(f.join(p, "file_id"), "uploaded file ids")
    title = f.opt_str(part, "filename", p)
    if url := f.opt_str(part, "file_url", p):
        return DocumentPart(url=url, title=title)
    raw = f.req_str(part, "file_data", p)
    media_type, data = parse_data_url(raw) or ("application/pdf", raw)
    return DocumentPart(media_type=media_type, data=data, title=title)


def _output(value: Any, p: str) -> tuple[TextPart | ImagePart, ...]:
    if isinstance(value, str):
        return (TextPart(value),)
    parts = _content(value, p)
    for i, part in enumerate(parts):
        if not isinstance(part, (TextPart, ImagePart)):
            raise f.unsupported(f.join(p, i), "files in function call output")
    return parts  # type: ignore[return-value]


def _reasoning(item: dict[str, Any], p: str) -> ThinkingPart:
    texts = []
    for key, part_type in (("summary", "summary_text"), ("content", "reasoning_text")):
        for i, raw in enumerate(f.opt_list(item, key, p) or []):
            part = f.as_object(raw, f.join(f.join(p, key), i))
            if part.get("type") == part_type:
                texts.append(f.req_str(part, "text", f.join(f.join(p, key), i)))
    return ThinkingPart("".join(texts), f.opt_str(item, "encrypted_content", p))


def _tools(body: dict[str, Any]) -> tuple[Tool, ...]:
    tools = []
    for i, raw in enumerate(f.opt_list(body, "tools") or []):
        p = f.join("tools", i)
        tool = f.as_object(raw, p)
        if tool.get("type") != "function":
            raise f.unsupported(f.join(p, "type"), f"tool type '{tool.get('type')}'")
        tools.append(Tool(name=f.req_str(tool, "name", p),
                          description=f.opt_str(tool, "description", p),
                          parameters=f.opt_object(tool, "parameters", p)
                          or {"type": "object", "properties": {}},
                          strict=f.opt_bool(tool, "strict", p)))
    return tuple(tools)


def _text_format(fmt: dict[str, Any] | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise InvalidRequest("'text.format.type' must be text, json_object or json_schema",
                             param="text.format.type")
    p = "text.format"
    return ResponseFormat("json_schema", name=f.req_str(fmt, "name", p),
                          schema=f.opt_object(fmt, "schema", p),
                          strict=f.opt_bool(fmt, "strict", p),
                          description=f.opt_str(fmt, "description", p))
