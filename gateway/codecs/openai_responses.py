"""OpenAI Responses API: the client surface of `/v1/responses` (`parse_request`) and the
upstream dialect of OpenAI-compatible servers marked as speaking it (`build_request`, in
`openai_responses_upstream`). The `response` object and its events live in
`openai_responses_output`; everything is re-exported here, so this module is the whole codec.

`previous_response_id` is resolved by the surface (gateway.surfaces.openai_responses) before
parsing; conversations and stored prompts are refused. Input items map as: messages -> turns
("system"/"developer" ones at the start -> the system prompt), `reasoning` -> thinking (summary
text, `encrypted_content` as signature), `function_call` / `custom_tool_call` -> a tool call of
the assistant turn, `function_call_output` / `custom_tool_call_output` -> a tool result.

Tools for upstreams of other dialects: `function` as is; a `namespace` group is flattened into
its functions, each named `<namespace>__<name>` (kept unique and within 64 characters), and
the calls come back under their own name with `namespace` set; a `custom` tool becomes a
function of one string argument `input` (its grammar, if any, in the description), and its
calls come back as `custom_tool_call` items. Hosted tools (web search, file search, code
interpreter, MCP, ...), their call items in `input`, and options only the Responses API knows
(`include`, `truncation`, `service_tier`, ...) are dropped and listed in `ChatRequest.dropped`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.codecs import fields as f
from gateway.codecs.media import image_from_url, parse_data_url
from gateway.codecs.openai_chat import tool_choice_from_openai
from gateway.codecs.openai_responses_output import StreamEncoder, format_response, \
    usage_to_responses
from gateway.codecs.openai_responses_upstream import (Passthrough, StreamDecoder, build_request,
                                                      error_in_body, parse_response,
                                                      stream_done, usage_from)
from gateway.errors import InvalidRequest
from gateway.types import (ChatRequest, ContentPart, DocumentPart, ImagePart, Message, Reasoning,
                           ResponseFormat, TextPart, ThinkingPart, Tool, ToolCallPart,
                           ToolChoice, ToolResultPart)

__all__ = ["parse_request", "format_response", "StreamEncoder", "usage_to_responses",
           "build_request", "parse_response", "StreamDecoder", "Passthrough", "usage_from",
           "error_in_body", "stream_done", "HOSTED_TOOLS", "flat_tool_name"]

_KNOWN = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "reasoning", "text", "stream", "user",
    "metadata",
})
# Read by the gateway itself (the response store), so never "dropped".
_GATEWAY_FIELDS = frozenset({"store", "previous_response_id"})
_STATEFUL = {
    "conversation": "'conversation' (send the whole conversation in 'input', or use "
                    "'previous_response_id')",
    "prompt": "stored prompts ('prompt')",
}
# Tools the Responses API runs itself; another dialect's upstream has nothing to run them.
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "code_interpreter", "image_generation", "computer_use",
    "computer_use_preview", "mcp", "local_shell", "shell", "apply_patch", "tool_search",
})
# Input items that record a hosted tool's work; meaningless to another dialect's upstream.
_HOSTED_ITEMS = frozenset({
    "web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call",
    "computer_call", "computer_call_output", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "mcp_approval_response", "local_shell_call",
    "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "tool_search_call", "tool_search_output", "item_reference",
    "compaction", "compaction_summary",
})
_NAME_LIMIT = 64  # OpenAI's limit on function names, the strictest of the dialects


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """A Responses request body -> ChatRequest; InvalidRequest names the bad field."""
    f.as_object(body, "body")
    model = f.req_str(body, "model")
    for key, what in _STATEFUL.items():
        if body.get(key) is not None:
            raise f.unsupported(key, what)
    if body.get("input") is None:
        raise InvalidRequest("'input' is required", param="input")
    dropped: list[str] = []
    tools = _tools(body, dropped)
    system, messages = _input(body["input"], tools, dropped)
    tool_choice = _tool_choice(body.get("tool_choice"), tools, dropped)
    if instructions := f.opt_str(body, "instructions"):
        system = (TextPart(instructions), *system)
    reasoning = f.opt_object(body, "reasoning") or {}
    effort = f.opt_str(reasoning, "effort", "reasoning")
    if reasoning.get("summary") is not None:
        dropped.append("reasoning.summary")
    text = f.opt_object(body, "text") or {}
    if text.get("verbosity") is not None:
        dropped.append("text.verbosity")
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    dropped.extend(k for k in extra if k not in _GATEWAY_FIELDS and extra[k] is not None)
    return ChatRequest(
        model=model,
        messages=messages,
        surface="openai_responses",
        system=system,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=f.opt_bool(body, "parallel_tool_calls"),
        max_tokens=f.opt_int(body, "max_output_tokens", minimum=1),
        temperature=f.opt_number(body, "temperature", minimum=0, maximum=2),
        top_p=f.opt_number(body, "top_p", minimum=0, maximum=1),
        stream=bool(f.opt_bool(body, "stream")),
        reasoning=Reasoning(effort=effort) if effort else None,
        response_format=_text_format(f.opt_object(text, "format", "text")),
        user=f.opt_str(body, "user"),
        metadata=f.str_map(body, "metadata"),
        extra=extra,
        dropped=tuple(dict.fromkeys(dropped)),
    )


def _input(value: Any, tools: tuple[Tool, ...],
           dropped: list[str]) -> tuple[tuple[TextPart, ...], tuple[Message, ...]]:
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
            name = f.req_str(item, "name", p)
            if namespace := f.opt_str(item, "namespace", p):
                name = _flat_name_of(tools, namespace, name)
            add("assistant", (ToolCallPart(id=f.req_str(item, "call_id", p), name=name,
                                           arguments=f.opt_str(item, "arguments", p) or "{}"),),
                merge=True)
        elif kind == "custom_tool_call":
            add("assistant", (ToolCallPart(
                id=f.req_str(item, "call_id", p), name=f.req_str(item, "name", p),
                arguments=json.dumps({"input": f.opt_str(item, "input", p) or ""},
                                     ensure_ascii=False)),), merge=True)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            result = ToolResultPart(tool_call_id=f.req_str(item, "call_id", p),
                                    content=_output(item.get("output"), f.join(p, "output")))
            last = messages[-1] if messages else None
            add("user", (result,), merge=bool(last) and all(
                isinstance(x, ToolResultPart) for x in last.content))  # type: ignore[union-attr]
        elif kind == "reasoning":
            add("assistant", (_reasoning(item, p),), merge=True)
        elif kind in _HOSTED_ITEMS:
            dropped.append(f"input.{kind}")
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


def flat_tool_name(namespace: str, name: str, taken: set[str]) -> str:
    """The function name a namespaced tool gets upstream: `<namespace>__<name>`, shortened
    with a digest past 64 characters and suffixed if another tool already has it."""
    flat = f"{namespace}__{name}"
    if len(flat) > _NAME_LIMIT:
        digest = hashlib.sha256(flat.encode()).hexdigest()[:8]
        flat = f"{flat[:_NAME_LIMIT - 9]}_{digest}"
    candidate, n = flat, 1
    while candidate in taken:
        n += 1
        candidate = f"{flat[:_NAME_LIMIT - 3]}_{n}"
    taken.add(candidate)
    return candidate


def _flat_name_of(tools: tuple[Tool, ...], namespace: str, name: str) -> str:
    for tool in tools:
        if tool.namespace == namespace and tool.original == name:
            return tool.name
    return flat_tool_name(namespace, name, set())


def _function(tool: dict[str, Any], p: str, *, name: str | None = None,
              namespace: str | None = None) -> Tool:
    original = f.req_str(tool, "name", p)
    return Tool(name=name or original, description=f.opt_str(tool, "description", p),
                parameters=f.opt_object(tool, "parameters", p)
                or {"type": "object", "properties": {}},
                strict=f.opt_bool(tool, "strict", p), namespace=namespace,
                original=original if namespace else None)


def _custom(tool: dict[str, Any], p: str) -> Tool:
    description = f.opt_str(tool, "description", p) or ""
    fmt = f.opt_object(tool, "format", p) or {}
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        description += (f"\n\nThe `input` string must follow this {fmt.get('syntax') or ''}"
                        f" grammar:\n{fmt['definition']}")
    return Tool(name=f.req_str(tool, "name", p), description=description.strip() or None,
                parameters={"type": "object", "required": ["input"],
                            "properties": {"input": {"type": "string",
                                                     "description": "The tool's input text"}}},
                custom=True)


def _tools(body: dict[str, Any], dropped: list[str]) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    raw_tools = f.opt_list(body, "tools") or []
    taken = {t.get("name") for t in raw_tools if isinstance(t, dict)
             and t.get("type") in ("function", "custom")}
    for i, raw in enumerate(raw_tools):
        p = f.join("tools", i)
        tool = f.as_object(raw, p)
        kind = tool.get("type")
        if kind == "function":
            tools.append(_function(tool, p))
        elif kind == "custom":
            tools.append(_custom(tool, p))
        elif kind == "namespace":
            namespace = f.req_str(tool, "name", p)
            for j, inner in enumerate(f.opt_list(tool, "tools", p) or []):
                pp = f.join(f.join(p, "tools"), j)
                inner = f.as_object(inner, pp)
                if inner.get("type", "function") != "function":
                    dropped.append(f"tools.{namespace}.{inner.get('type')}")
                    continue
                flat = flat_tool_name(namespace, f.req_str(inner, "name", pp), taken)
                tools.append(_function(inner, pp, name=flat, namespace=namespace))
        elif isinstance(kind, str) and kind in HOSTED_TOOLS:
            dropped.append(f"tools.{kind}")
        else:
            raise f.unsupported(f.join(p, "type"), f"tool type '{kind}'")
    return tuple(tools)


def _tool_choice(value: Any, tools: tuple[Tool, ...], dropped: list[str]) -> ToolChoice | None:
    """Responses' `tool_choice`: the modes, a function or custom tool by name (a namespaced
    one by `namespace` + `name`), `allowed_tools` (its mode; the subset is dropped), a hosted
    tool (dropped: the upstream has no such tool)."""
    if not isinstance(value, dict):
        return tool_choice_from_openai(value, nested=False)
    kind = value.get("type")
    if kind in ("function", "custom"):
        name = f.req_str(value, "name", "tool_choice")
        if namespace := f.opt_str(value, "namespace", "tool_choice"):
            name = _flat_name_of(tools, namespace, name)
        return ToolChoice("tool", name)
    if kind == "allowed_tools":
        dropped.append("tool_choice.tools")
        return ToolChoice("any" if value.get("mode") == "required" else "auto")
    if isinstance(kind, str) and kind in HOSTED_TOOLS:
        dropped.append(f"tool_choice.{kind}")
        return None
    raise f.unsupported("tool_choice.type", f"tool_choice type '{kind}'")


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
