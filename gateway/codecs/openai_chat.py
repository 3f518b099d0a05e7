"""OpenAI Chat Completions: the client surface (`parse_request`) and the upstream dialect
(`build_request`) of `/v1/chat/completions`. Completion bodies and chunk streams live in
`openai_chat_output` and are re-exported here, so this module is the whole codec.

What does not map one to one, and how we carry it:
- Leading "system"/"developer" messages become `ChatRequest.system`; later ones stay in place as
  system turns. Upstream we send one leading "system" message (widest server support).
- "tool" messages become `ToolResultPart`s of one user turn. OpenAI has no `is_error`; we prefix
  the tool message content with "Error: " instead.
- Assistant `reasoning_content` becomes a `ThinkingPart` (no signature).
"""
from __future__ import annotations

import json
from typing import Any

from gateway.codecs import fields as f
from gateway.codecs.media import check_media_allowed, data_url, image_from_url, image_url, \
    parse_data_url
from gateway.codecs.openai_chat_output import (Passthrough, StreamDecoder, StreamEncoder,
                                               error_in_body, format_response, parse_response,
                                               stream_done, usage_from)
from gateway.errors import InvalidRequest
from gateway.types import (ChatRequest, CodecOptions, ContentPart, DocumentPart, ImagePart,
                           Message, Reasoning, ResponseFormat, TextPart, ThinkingPart, Tool,
                           ToolCallPart, ToolChoice, ToolResultPart)

__all__ = ["Passthrough", "usage_from", "error_in_body", "stream_done", "parse_request", "build_request", "format_response", "parse_response",
           "StreamEncoder", "StreamDecoder", "TOOL_ERROR_PREFIX", "tool_choice_from_openai",
           "tool_choice_to_openai"]

TOOL_ERROR_PREFIX = "Error: "

_KNOWN = frozenset({
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
    "reasoning_effort", "response_format", "user", "metadata", "n",
})


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """A Chat Completions request body -> ChatRequest; InvalidRequest names the bad field."""
    f.as_object(body, "body")
    model = f.req_str(body, "model")
    raw_messages = f.opt_list(body, "messages", required=True) or []
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    if f.opt_int(body, "n", minimum=1) not in (None, 1):
        raise InvalidRequest("only n=1 is supported", param="n")
    for legacy in ("functions", "function_call"):
        if legacy in body:
            raise f.unsupported(legacy, f"the legacy '{legacy}' parameter (use 'tools')")
    system, messages = _messages(raw_messages)
    stream_options = f.opt_object(body, "stream_options") or {}
    max_tokens = f.opt_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = f.opt_int(body, "max_tokens", minimum=1)
    effort = f.opt_str(body, "reasoning_effort")
    return ChatRequest(
        model=model,
        messages=messages,
        surface="openai_chat",
        system=system,
        tools=_tools(body),
        tool_choice=tool_choice_from_openai(body.get("tool_choice"), nested=True),
        parallel_tool_calls=f.opt_bool(body, "parallel_tool_calls"),
        max_tokens=max_tokens,
        temperature=f.opt_number(body, "temperature", minimum=0, maximum=2),
        top_p=f.opt_number(body, "top_p", minimum=0, maximum=1),
        stop=f.str_or_list(body, "stop"),
        stream=bool(f.opt_bool(body, "stream")),
        include_usage=bool(f.opt_bool(stream_options, "include_usage", "stream_options")),
        reasoning=Reasoning(effort=effort) if effort else None,
        response_format=_response_format(f.opt_object(body, "response_format")),
        user=f.opt_str(body, "user"),
        metadata=f.str_map(body, "metadata"),
        extra=(extra := {k: v for k, v in body.items() if k not in _KNOWN}),
        dropped=tuple(k for k, v in extra.items() if v is not None),
    )


def _messages(raw: list[Any]) -> tuple[tuple[TextPart, ...], tuple[Message, ...]]:
    system: list[TextPart] = []
    messages: list[Message] = []
    for i, item in enumerate(raw):
        p = f.join("messages", i)
        m = f.as_object(item, p)
        role = f.req_str(m, "role", p)
        if role in ("system", "developer"):
            parts = _text_parts(m.get("content"), f.join(p, "content"))
            if messages:
                messages.append(Message("system", parts))
            else:
                system.extend(parts)
        elif role == "user":
            messages.append(Message("user", _user_content(m.get("content"), f.join(p, "content"))))
        elif role == "assistant":
            messages.append(Message("assistant", _assistant_content(m, p)))
        elif role == "tool":
            result = ToolResultPart(tool_call_id=f.req_str(m, "tool_call_id", p),
                                    content=_text_parts(m.get("content"), f.join(p, "content")))
            previous = messages[-1] if messages else None
            if previous and previous.role == "user" and all(
                    isinstance(part, ToolResultPart) for part in previous.content):
                messages[-1] = Message("user", (*previous.content, result))
            else:
                messages.append(Message("user", (result,)))
        elif role == "function":
            raise f.unsupported(f.join(p, "role"), "the legacy 'function' role (use 'tool')")
        else:
            raise InvalidRequest(f"unknown role '{role}'", param=f.join(p, "role"))
    return tuple(system), tuple(messages)


def _text_parts(content: Any, p: str) -> tuple[TextPart, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    parts = []
    for i, item in enumerate(f.as_list(content, p)):
        part = f.as_object(item, f.join(p, i))
        if part.get("type") != "text":
            raise InvalidRequest("only text parts are allowed here", param=f.join(p, i) + ".type")
        parts.append(TextPart(f.req_str(part, "text", f.join(p, i))))
    return tuple(parts)


def _user_content(content: Any, p: str) -> tuple[ContentPart, ...]:
    if content is None:
        raise InvalidRequest(f"'{p}' is required", param=p)
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[ContentPart] = []
    for i, item in enumerate(f.as_list(content, p)):
        pp = f.join(p, i)
        part = f.as_object(item, pp)
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(f.req_str(part, "text", pp)))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            image = f.as_object(image, f.join(pp, "image_url"))
            parts.append(image_from_url(f.req_str(image, "url", f.join(pp, "image_url")),
                                        detail=f.opt_str(image, "detail", f.join(pp, "image_url")),
                                        param=f.join(pp, "image_url.url")))
        elif kind == "file":
            parts.append(_file_part(f.as_object(part.get("file"), f.join(pp, "file")),
                                    f.join(pp, "file")))
        else:
            raise f.unsupported(f.join(pp, "type"), f"content part type '{kind}'")
    return tuple(parts)


def _file_part(file: dict[str, Any], p: str) -> DocumentPart:
    if "file_id" in file:
        raise f.unsupported(f.join(p, "file_id"), "uploaded file ids")
    raw = f.req_str(file, "file_data", p)
    media_type, data = parse_data_url(raw) or ("application/pdf", raw)
    return DocumentPart(media_type=media_type, data=data, title=f.opt_str(file, "filename", p))


def _assistant_content(m: dict[str, Any], p: str) -> tuple[ContentPart, ...]:
    parts: list[ContentPart] = []
    for key in ("reasoning_content", "reasoning"):
        if reasoning := f.opt_str(m, key, p):
            parts.append(ThinkingPart(reasoning))
            break
    content = m.get("content")
    if isinstance(content, str):
        if content:
            parts.append(TextPart(content))
    elif content is not None:
        for i, item in enumerate(f.as_list(content, f.join(p, "content"))):
            pp = f.join(f.join(p, "content"), i)
            part = f.as_object(item, pp)
            key = {"text": "text", "refusal": "refusal"}.get(part.get("type", ""))
            if key is None:
                raise InvalidRequest("assistant content parts must be text or refusal",
                                     param=f.join(pp, "type"))
            parts.append(TextPart(f.req_str(part, key, pp)))
    if refusal := f.opt_str(m, "refusal", p):
        parts.append(TextPart(refusal))
    for i, item in enumerate(f.opt_list(m, "tool_calls", p) or []):
        pp = f.join(f.join(p, "tool_calls"), i)
        call = f.as_object(item, pp)
        if call.get("type", "function") != "function":
            raise f.unsupported(f.join(pp, "type"), f"tool call type '{call.get('type')}'")
        function = f.as_object(call.get("function"), f.join(pp, "function"))
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        parts.append(ToolCallPart(id=f.req_str(call, "id", pp),
                                  name=f.req_str(function, "name", f.join(pp, "function")),
                                  arguments=arguments or "{}"))
    return tuple(parts)


def _tools(body: dict[str, Any]) -> tuple[Tool, ...]:
    tools = []
    for i, item in enumerate(f.opt_list(body, "tools") or []):
        p = f.join("tools", i)
        tool = f.as_object(item, p)
        if tool.get("type") != "function":
            raise f.unsupported(f.join(p, "type"), f"tool type '{tool.get('type')}'")
        function = f.as_object(tool.get("function"), f.join(p, "function"))
        pf = f.join(p, "function")
        tools.append(Tool(name=f.req_str(function, "name", pf),
                          description=f.opt_str(function, "description", pf),
                          parameters=f.opt_object(function, "parameters", pf)
                          or {"type": "object", "properties": {}},
                          strict=f.opt_bool(function, "strict", pf)))
    return tuple(tools)


def tool_choice_from_openai(value: Any, *, nested: bool) -> ToolChoice | None:
    """The IR of OpenAI's `tool_choice`: "auto" | "none" | "required" | a named function, which
    Chat Completions nests (`{"type": "function", "function": {"name"}}`, nested=True) and the
    Responses API does not (`{"type": "function", "name"}`)."""
    if value is None:
        return None
    if isinstance(value, str):
        mode = {"auto": "auto", "none": "none", "required": "any"}.get(value)
        if mode is None:
            raise InvalidRequest("'tool_choice' must be auto, none, required or a function",
                                 param="tool_choice")
        return ToolChoice(mode)  # type: ignore[arg-type]
    choice = f.as_object(value, "tool_choice")
    if choice.get("type") != "function":
        raise f.unsupported("tool_choice.type", f"tool_choice type '{choice.get('type')}'")
    if not nested:
        return ToolChoice("tool", f.req_str(choice, "name", "tool_choice"))
    function = f.as_object(choice.get("function"), "tool_choice.function")
    return ToolChoice("tool", f.req_str(function, "name", "tool_choice.function"))


def tool_choice_to_openai(choice: ToolChoice, *, nested: bool) -> str | dict[str, Any]:
    """OpenAI's `tool_choice` for the IR one; `nested` as in `tool_choice_from_openai`."""
    if choice.mode != "tool":
        return {"auto": "auto", "any": "required", "none": "none"}[choice.mode]
    if nested:
        return {"type": "function", "function": {"name": choice.name}}
    return {"type": "function", "name": choice.name}


def _response_format(value: dict[str, Any] | None) -> ResponseFormat | None:
    if value is None:
        return None
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise InvalidRequest("'response_format.type' must be text, json_object or json_schema",
                             param="response_format.type")
    spec = f.as_object(value.get("json_schema"), "response_format.json_schema")
    p = "response_format.json_schema"
    return ResponseFormat("json_schema", name=f.req_str(spec, "name", p),
                          schema=f.opt_object(spec, "schema", p),
                          strict=f.opt_bool(spec, "strict", p),
                          description=f.opt_str(spec, "description", p))


def build_request(req: ChatRequest, *, upstream_model: str, stream: bool,
                  options: CodecOptions, dropped: list[str] | None = None) -> dict[str, Any]:
    """The Chat Completions body for an OpenAI-compatible upstream; raises InvalidRequest for
    content the deployment does not accept (see CodecOptions). What it leaves out of the
    request is appended to `dropped`: reasoning the route cannot take (`_effort`) and
    Anthropic's `cache_control` breakpoints (OpenAI caches prefixes by itself)."""
    dropped = [] if dropped is None else dropped
    check_media_allowed(req, options)
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _joined(req.system)})
    for message in req.messages:
        messages.extend(_wire_messages(message, options))
    body: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if req.tools:
        body["tools"] = [_wire_tool(t) for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = tool_choice_to_openai(req.tool_choice, nested=True)
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if (max_tokens := options.clamp_max_tokens(req.max_tokens)) is not None:
        body[options.openai_max_tokens_field] = max_tokens
    for key in ("temperature", "top_p", "user"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if req.stop:
        body["stop"] = list(req.stop)
    if effort := _effort(req, options, dropped):
        body["reasoning_effort"] = effort
    if _has_cache_control(req):
        dropped.append("cache_control")
    if req.response_format is not None and req.response_format.type != "text":
        body["response_format"] = _wire_response_format(req.response_format)
    if req.metadata:
        body["metadata"] = dict(req.metadata)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.surface == "openai_chat":
        body.update({k: v for k, v in req.extra.items() if k not in body})
    return body


def _joined(parts: tuple[TextPart, ...]) -> str:
    return "\n\n".join(p.text for p in parts)


# Anthropic's `output_config.effort` in OpenAI's vocabulary ("max" has no equivalent).
_EFFORT_TO_OPENAI = {"max": "high"}


def _effort(req: ChatRequest, options: CodecOptions, dropped: list[str]) -> str | None:
    """`reasoning_effort` for the request, where the route can reason (CodecOptions.reasoning:
    True maps budgets, adaptive thinking and efforts; None passes only an effort the client
    named in OpenAI's vocabulary; False sends none). Anything not sent is named in
    `dropped`."""
    r = req.reasoning
    if r is None:
        return None
    anthropic = req.surface == "anthropic_messages"
    own_effort = r.effort if r.effort and not anthropic else None
    effort = None
    if options.reasoning is True:
        if r.effort:
            effort = _EFFORT_TO_OPENAI.get(r.effort, r.effort)
        elif r.budget_tokens:
            effort = options.effort_for_budget(r.budget_tokens)
        if effort is not None or (r.adaptive and not r.budget_tokens):
            return effort  # adaptive alone: the upstream model's default effort
    elif options.reasoning is None and own_effort:
        return own_effort
    if own_effort == "none":
        return None
    if anthropic:
        if r.budget_tokens or r.adaptive:
            dropped.append("thinking")
        if r.effort:
            dropped.append("output_config.effort")
    elif r.effort:
        dropped.append("reasoning.effort" if req.surface == "openai_responses"
                       else "reasoning_effort")
    return None


def _has_cache_control(req: ChatRequest) -> bool:
    parts = [*req.system, *req.tools, *(p for m in req.messages for p in m.content)]
    return any(getattr(p, "cache_control", None) for p in parts) or any(
        c.cache_control for m in req.messages for p in m.content
        if isinstance(p, ToolResultPart) for c in p.content)


def _wire_messages(message: Message, options: CodecOptions) -> list[dict[str, Any]]:
    if message.role == "system":
        return [{"role": "system", "content": _joined(
            tuple(p for p in message.content if isinstance(p, TextPart)))}]
    if message.role == "assistant":
        return [_wire_assistant(message, options)]
    # Tool messages must directly follow the assistant turn that made the calls; the user's
    # own content, and any images a tool returned (tool messages carry text only), come after.
    out: list[dict[str, Any]] = []
    rest: list[ContentPart] = []
    for part in message.content:
        if isinstance(part, ToolResultPart):
            text = part.text
            out.append({"role": "tool", "tool_call_id": part.tool_call_id,
                        "content": TOOL_ERROR_PREFIX + text if part.is_error else text})
            rest.extend(p for p in part.content if isinstance(p, ImagePart))
        else:
            rest.append(part)
    if rest:
        out.append({"role": "user", "content": _wire_user_content(rest)})
    return out


def _wire_user_content(parts: list[ContentPart]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    wire: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            wire.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": image_url(part)}
            if part.detail:
                image["detail"] = part.detail
            wire.append({"type": "image_url", "image_url": image})
        elif isinstance(part, DocumentPart):
            wire.append(_wire_document(part))
    return wire


def _wire_document(part: DocumentPart) -> dict[str, Any]:
    if part.text is not None:
        return {"type": "text", "text": part.text}
    if part.data is None:
        raise InvalidRequest("documents by URL cannot be sent to this model; send the file "
                             "inline", param="messages")
    return {"type": "file", "file": {"filename": part.title or "document",
                                     "file_data": data_url(part.media_type or "application/pdf",
                                                           part.data)}}


def _wire_assistant(message: Message, options: CodecOptions) -> dict[str, Any]:
    text = "".join(p.text for p in message.content if isinstance(p, TextPart))
    calls = [{"id": p.id, "type": "function",
              "function": {"name": p.name, "arguments": p.arguments}}
             for p in message.content if isinstance(p, ToolCallPart)]
    wire: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        wire["tool_calls"] = calls
    reasoning = "".join(p.text for p in message.content if isinstance(p, ThinkingPart))
    if reasoning and options.replay_reasoning_content:
        wire["reasoning_content"] = reasoning
    return wire


def _wire_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = dict(tool.parameters)
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _wire_response_format(rf: ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    spec: dict[str, Any] = {"name": rf.name or "response"}
    if rf.description is not None:
        spec["description"] = rf.description
    if rf.schema is not None:
        spec["schema"] = dict(rf.schema)
    if rf.strict is not None:
        spec["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": spec}
