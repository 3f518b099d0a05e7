"""Anthropic Messages: the client surface (`parse_request`) and the upstream dialect
(`build_request`) of `/v1/messages`. Message bodies and event streams live in
`anthropic_messages_output` and are re-exported here, so this module is the whole codec.

Rules of the Anthropic API that `build_request` enforces on requests from other dialects:
- `max_tokens` is required (CodecOptions.anthropic_default_max_tokens when the client gave none).
- Turns alternate; consecutive same-role turns are merged and tool results lead their turn.
- Thinking without a signature cannot be replayed, so it is dropped; a thinking budget derived
  from an effort is kept below `max_tokens` and at least 1024, or thinking is left off; and
  thinking is left off when the last assistant turn calls tools without a thinking block first
  (a client of another dialect could not have kept one), which Anthropic would reject.
- Tool-call ids may only contain letters, digits, "_" and "-"; others are replaced by "_".
- `temperature` tops out at 1 (OpenAI's goes to 2); higher values are sent as 1.
- Structured output: a JSON schema goes to `output_config.format`; plain JSON mode has no
  Anthropic form and is not sent.
- Prompt caching (CodecOptions.auto_cache): a request from another dialect that carries no
  `cache_control` of its own gets ephemeral breakpoints on the last tool, the last system
  block and the last block of each of the last two user turns (at most 4, Anthropic's limit).
  Anthropic caches only the prefix up to a breakpoint, so without them an agent loop pays full
  price for its whole history on every turn; with them, turn N reads what turn N-1 wrote.
"""
from __future__ import annotations

import re
from typing import Any

from gateway.codecs import fields as f
from gateway.codecs.anthropic_messages_output import (Passthrough, StreamDecoder,
                                                      StreamEncoder, error_in_body, error_type,
                                                      format_response, parse_response,
                                                      stream_done, tool_arguments, tool_input,
                                                      usage_from)
from gateway.codecs.media import check_media_allowed
from gateway.errors import InvalidRequest
from gateway.types import (ChatRequest, CodecOptions, ContentPart, DocumentPart, ImagePart,
                           Message, Reasoning, RedactedThinkingPart, ResponseFormat, TextPart,
                           ThinkingPart, Tool, ToolCallPart, ToolChoice, ToolResultPart)

__all__ = ["Passthrough", "usage_from", "error_in_body", "stream_done", "parse_request", "build_request", "format_response", "parse_response",
           "StreamEncoder", "StreamDecoder", "error_type"]

_KNOWN = frozenset({
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking",
    "stop_sequences", "temperature", "top_p", "stream", "metadata",
})
_MIN_THINKING_BUDGET = 1024
_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")


def parse_request(body: dict[str, Any], *, require_max_tokens: bool = True) -> ChatRequest:
    """A Messages request body -> ChatRequest; InvalidRequest names the bad field in
    Anthropic's words. `require_max_tokens=False` parses a count_tokens body, which has none.

    Every documented shape is accepted. What the IR cannot carry to another dialect is named
    in `ChatRequest.dropped`: top-level fields it does not model (kept in `extra` for an
    Anthropic upstream: `context_management`, `container`, `mcp_servers`, `top_k` …), tools
    Anthropic defines or runs itself (`tools[3] (web_search_20250305)`), content blocks of
    server tools, file-id sources, and citations. A `search_result` block becomes text."""
    f.as_object(body, "body")
    dropped: list[str] = []
    model = f.req_str(body, "model")
    max_tokens = f.opt_int(body, "max_tokens", required=require_max_tokens)
    raw_messages = f.opt_list(body, "messages", required=True) or []
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    messages = tuple(_message(m, f.join("messages", i), dropped)
                     for i, m in enumerate(raw_messages))
    tools = _tools(body, dropped)
    tool_choice, parallel = _tool_choice(f.opt_object(body, "tool_choice"))
    if tool_choice is not None and tool_choice.name is not None \
            and all(t.name != tool_choice.name for t in tools):
        dropped.append("tool_choice")  # it names a tool left out above
        tool_choice = ToolChoice("auto")
    metadata = f.opt_object(body, "metadata") or {}
    extra = {k: v for k, v in body.items() if k not in _KNOWN}
    response_format = None
    effort = None
    output_config = f.opt_object(body, "output_config")
    if output_config is not None:
        if output_config.get("format") is not None:
            response_format = _response_format(f.as_object(output_config["format"],
                                                           "output_config.format"))
        effort = f.opt_str(output_config, "effort", "output_config")
        rest = {k: v for k, v in output_config.items() if k != "format"}
        extra = {k: v for k, v in extra.items() if k != "output_config"}
        if rest:
            extra["output_config"] = rest
    for key, value in extra.items():
        if key == "output_config":
            dropped.extend(f"output_config.{k}" for k in value if k != "effort")
        elif value is not None:
            dropped.append(key)
    return ChatRequest(
        model=model,
        messages=messages,
        surface="anthropic_messages",
        system=_system(body.get("system")),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_tokens=max_tokens,
        temperature=f.opt_number(body, "temperature", minimum=0, maximum=1),
        top_p=f.opt_number(body, "top_p", minimum=0, maximum=1),
        stop=f.str_or_list(body, "stop_sequences"),
        stream=bool(f.opt_bool(body, "stream")),
        reasoning=_thinking(f.opt_object(body, "thinking"), effort),
        response_format=response_format,
        user=f.opt_str(metadata, "user_id", "metadata"),
        extra=extra,
        dropped=tuple(dict.fromkeys(dropped)),
    )


def _system(value: Any) -> tuple[TextPart, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (TextPart(value),) if value else ()
    parts = []
    for i, item in enumerate(f.as_list(value, "system")):
        block = f.as_object(item, f.join("system", i))
        if block.get("type") != "text":
            raise InvalidRequest(f"system.{i}.type: Input should be 'text'",
                                 param=f.join("system", i) + ".type")
        parts.append(TextPart(f.req_str(block, "text", f.join("system", i)),
                              block.get("cache_control")))
    return tuple(parts)


def _message(item: Any, p: str, dropped: list[str]) -> Message:
    """One turn. A "system" turn (Claude Code's mid-conversation-system beta) is an
    instruction at its place in the conversation."""
    m = f.as_object(item, p)
    role = f.req_str(m, "role", p)
    if role not in ("user", "assistant", "system"):
        # Anthropic's own wording (Claude Code recognises it).
        raise InvalidRequest(f"{_dotted(p)}.role: Input should be 'user' or 'assistant'",
                             param=f.join(p, "role"))
    content = m.get("content")
    if isinstance(content, str):
        return Message(role, (TextPart(content),))
    pc = f.join(p, "content")
    parts = (_block(b, f.join(pc, i), dropped) for i, b in enumerate(f.as_list(content, pc)))
    return Message(role, tuple(part for part in parts if part is not None))


def _dotted(param: str) -> str:
    """A param path as Anthropic writes it: "messages[2].role" -> "messages.2.role"."""
    return re.sub(r"\[(\d+)\]", r".\1", param)


def _block(item: Any, p: str, dropped: list[str]) -> ContentPart | None:
    """The IR part of one content block; None (and its kind named in `dropped`) for blocks
    the IR does not carry: server-tool calls and results, MCP blocks, container uploads."""
    block = f.as_object(item, p)
    kind = block.get("type")
    cache = block.get("cache_control")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{_dotted(p)}.type: Field required", param=f.join(p, "type"))
    citations = block.get("citations")
    if citations and not (isinstance(citations, dict) and not citations.get("enabled")):
        dropped.append("citations")
    if kind == "text":
        return TextPart(f.req_str(block, "text", p), cache)
    if kind == "image":
        return _image(block, p, dropped)
    if kind == "document":
        return _document(block, p, dropped)
    if kind == "search_result":
        return _search_result(block, p)
    if kind == "tool_use":
        return ToolCallPart(id=f.req_str(block, "id", p), name=f.req_str(block, "name", p),
                            arguments=tool_arguments(f.opt_object(block, "input", p)),
                            cache_control=cache)
    if kind == "tool_result":
        return _tool_result(block, p, dropped)
    if kind == "thinking":
        return ThinkingPart(f.req_str(block, "thinking", p), f.opt_str(block, "signature", p))
    if kind == "redacted_thinking":
        return RedactedThinkingPart(f.req_str(block, "data", p))
    dropped.append(f"{kind} blocks")
    return None


def _search_result(block: dict[str, Any], p: str) -> TextPart:
    """A search result as text: its title and source, then its text blocks."""
    texts = [f.req_str(f.as_object(c, f.join(f.join(p, "content"), i)), "text",
                       f.join(f.join(p, "content"), i))
             for i, c in enumerate(f.opt_list(block, "content", p) or [])]
    head = [t for t in (f.opt_str(block, "title", p), f.opt_str(block, "source", p)) if t]
    return TextPart("\n".join(head) + "\n\n" + "\n\n".join(texts), block.get("cache_control"))


def _image(block: dict[str, Any], p: str, dropped: list[str]) -> ImagePart | None:
    ps = f.join(p, "source")
    source = f.as_object(block.get("source"), ps)
    kind = source.get("type")
    if kind == "base64":
        return ImagePart(data=f.req_str(source, "data", ps),
                         media_type=f.req_str(source, "media_type", ps),
                         cache_control=block.get("cache_control"))
    if kind == "url":
        return ImagePart(url=f.req_str(source, "url", ps), cache_control=block.get("cache_control"))
    dropped.append(f"image blocks ({kind} source)")  # a Files API id: only Anthropic has it
    return None


def _document(block: dict[str, Any], p: str, dropped: list[str]) -> DocumentPart | None:
    ps = f.join(p, "source")
    source = f.as_object(block.get("source"), ps)
    kind = source.get("type")
    common = {"title": f.opt_str(block, "title", p), "cache_control": block.get("cache_control")}
    if kind == "base64":
        return DocumentPart(media_type=f.req_str(source, "media_type", ps),
                            data=f.req_str(source, "data", ps), **common)
    if kind == "text":
        return DocumentPart(media_type=f.opt_str(source, "media_type", ps) or "text/plain",
                            text=f.req_str(source, "data", ps), **common)
    if kind == "url":
        return DocumentPart(url=f.req_str(source, "url", ps), **common)
    if kind == "content":  # the document's own text and image blocks; its text is kept
        content = source.get("content")
        text = content if isinstance(content, str) else "\n\n".join(
            c.get("text") or "" for c in f.as_list(content, f.join(ps, "content"))
            if isinstance(c, dict) and c.get("type") == "text")
        return DocumentPart(media_type="text/plain", text=text, **common)
    dropped.append(f"document blocks ({kind} source)")
    return None


def _tool_result(block: dict[str, Any], p: str, dropped: list[str]) -> ToolResultPart:
    content = block.get("content")
    parts: list[TextPart | ImagePart] = []
    if isinstance(content, str):
        parts.append(TextPart(content))
    elif content is not None:
        pc = f.join(p, "content")
        for i, item in enumerate(f.as_list(content, pc)):
            part = _block(item, f.join(pc, i), dropped)
            if isinstance(part, DocumentPart) and part.text is not None:
                part = TextPart(part.text)
            if isinstance(part, (TextPart, ImagePart)):
                parts.append(part)
            elif part is not None:
                dropped.append(f"tool_result content ({f.as_object(item, pc).get('type')})")
    return ToolResultPart(tool_call_id=f.req_str(block, "tool_use_id", p), content=tuple(parts),
                          is_error=bool(f.opt_bool(block, "is_error", p)),
                          cache_control=block.get("cache_control"))


def _tools(body: dict[str, Any], dropped: list[str]) -> tuple[Tool, ...]:
    """The client's own tools. Tools Anthropic defines (bash, text_editor, computer, memory)
    or runs (web_search, web_fetch, code_execution, MCP toolsets) have no form elsewhere:
    left out, each named with its type."""
    tools = []
    for i, item in enumerate(f.opt_list(body, "tools") or []):
        p = f.join("tools", i)
        tool = f.as_object(item, p)
        if tool.get("type", "custom") not in ("custom", None):
            dropped.append(f"tools[{i}] ({tool.get('type')})")
            continue
        tools.append(Tool(name=f.req_str(tool, "name", p),
                          description=f.opt_str(tool, "description", p),
                          parameters=f.opt_object(tool, "input_schema", p)
                          or {"type": "object", "properties": {}},
                          strict=f.opt_bool(tool, "strict", p),
                          cache_control=tool.get("cache_control")))
    return tuple(tools)


def _tool_choice(choice: dict[str, Any] | None) -> tuple[ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    mode = choice.get("type")
    if mode not in ("auto", "any", "none", "tool"):
        raise InvalidRequest("'tool_choice.type' must be auto, any, none or tool",
                             param="tool_choice.type")
    name = f.req_str(choice, "name", "tool_choice") if mode == "tool" else None
    disable = f.opt_bool(choice, "disable_parallel_tool_use", "tool_choice")
    return ToolChoice(mode, name), None if disable is None else not disable


def _thinking(thinking: dict[str, Any] | None, effort: str | None) -> Reasoning | None:
    """Thinking (a budget, or adaptive) and `output_config.effort`, in one Reasoning."""
    kind = None if thinking is None else thinking.get("type")
    if kind not in (None, "enabled", "adaptive", "disabled"):
        raise InvalidRequest("thinking.type: Input should be 'enabled', 'adaptive' or "
                             "'disabled'", param="thinking.type")
    budget = f.opt_int(thinking, "budget_tokens", "thinking", minimum=1, required=True) \
        if kind == "enabled" else None
    if budget is None and kind != "adaptive" and effort is None:
        return None
    return Reasoning(effort=effort, budget_tokens=budget, adaptive=kind == "adaptive")


def _response_format(fmt: dict[str, Any]) -> ResponseFormat:
    if fmt.get("type") != "json_schema":
        raise InvalidRequest("'output_config.format.type' must be json_schema",
                             param="output_config.format.type")
    return ResponseFormat("json_schema", schema=f.opt_object(fmt, "schema", "output_config.format"))


def build_request(req: ChatRequest, *, upstream_model: str, stream: bool,
                  options: CodecOptions, dropped: list[str] | None = None) -> dict[str, Any]:
    """The Messages body for an Anthropic upstream; raises InvalidRequest for content the
    deployment does not accept (see CodecOptions). What it leaves out of the request is
    appended to `dropped`: reasoning where the route does not reason or the budget cannot be
    met, and JSON mode (no Anthropic form)."""
    dropped = [] if dropped is None else dropped
    check_media_allowed(req, options)
    system = list(req.system)
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in req.messages:
        if message.role == "system":
            # Anthropic has no mid-conversation instructions; they join the system prompt.
            system.extend(p for p in message.content if isinstance(p, TextPart))
            continue
        blocks = [b for b in (_wire_block(p) for p in message.content) if b is not None]
        if not blocks:
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((message.role, blocks))
    messages = [{"role": role, "content": _results_first(blocks) if role == "user" else blocks}
                for role, blocks in turns]
    max_tokens = options.clamp_max_tokens(req.max_tokens if req.max_tokens is not None
                                          else options.anthropic_default_max_tokens)
    body: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens,
                            "messages": messages}
    if system := [p for p in system if p.text]:  # empty text blocks are rejected
        body["system"] = _wire_system(system)
    if req.temperature is not None:
        body["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if stream:
        body["stream"] = True
    if req.tools:
        body["tools"] = [_wire_tool(t) for t in req.tools]
        if choice := _wire_tool_choice(req):
            body["tool_choice"] = choice
    if thinking := _wire_thinking(req, max_tokens, messages, options):
        body["thinking"] = thinking
    elif req.surface == "anthropic_messages":
        if req.reasoning is not None and (req.reasoning.budget_tokens or req.reasoning.adaptive):
            dropped.append("thinking")  # the route does not reason, or no budget fits
    elif req.reasoning is not None and req.reasoning.effort != "none":
        dropped.append("reasoning.effort" if req.surface == "openai_responses"
                       else "reasoning_effort")
    if req.user:
        body["metadata"] = {"user_id": req.user}
    output_config = dict(req.extra.get("output_config") or {}) \
        if req.surface == "anthropic_messages" else {}
    rf = req.response_format
    if rf is not None and rf.type == "json_schema":
        output_config["format"] = {"type": "json_schema", "schema": dict(rf.schema or {})}
    elif rf is not None and rf.type == "json_object":
        dropped.append("text.format" if req.surface == "openai_responses" else "response_format")
    if output_config:
        body["output_config"] = output_config
    if req.surface == "anthropic_messages":
        body.update({k: v for k, v in req.extra.items() if k not in body})
    elif options.auto_cache and not _has_cache_control(body):
        _add_breakpoints(body)
    return body


_EPHEMERAL = {"type": "ephemeral"}
_USER_BREAKPOINTS = 2


def _has_cache_control(body: dict[str, Any]) -> bool:
    system = body.get("system")
    blocks = [*body.get("tools", ()), *(system if isinstance(system, list) else ())]
    for message in body["messages"]:
        for block in message["content"]:
            blocks.append(block)
            if isinstance(block.get("content"), list):  # a tool result's own blocks
                blocks.extend(block["content"])
    return any("cache_control" in b for b in blocks)


def _add_breakpoints(body: dict[str, Any]) -> None:
    """Marks the cache breakpoints of a translated request (see the module docstring): the
    tools, the system prompt, and the last two user turns (the newest one writes the prefix
    the next request reads; the one before reads what the previous request wrote, should the
    newest turn add more blocks than Anthropic looks back over, 20). Below Anthropic's minimum
    cacheable prefix (1024 to 4096 tokens, by model) a breakpoint is ignored, not refused."""
    if body.get("tools"):
        body["tools"][-1]["cache_control"] = dict(_EPHEMERAL)
    if isinstance(body.get("system"), str):
        body["system"] = [{"type": "text", "text": body["system"]}]
    if body.get("system"):
        body["system"][-1]["cache_control"] = dict(_EPHEMERAL)
    user_turns = [m for m in body["messages"] if m["role"] == "user"]
    for message in user_turns[-_USER_BREAKPOINTS:]:
        message["content"][-1]["cache_control"] = dict(_EPHEMERAL)


def _with_cache(block: dict[str, Any], cache_control: Any) -> dict[str, Any]:
    if cache_control is not None:
        block["cache_control"] = dict(cache_control)
    return block


def _wire_system(parts: list[TextPart]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0].cache_control is None:
        return parts[0].text
    return [_with_cache({"type": "text", "text": p.text}, p.cache_control) for p in parts]


def _tool_id(tool_call_id: str) -> str:
    return _TOOL_ID_INVALID.sub("_", tool_call_id)


def _wire_image(part: ImagePart) -> dict[str, Any]:
    source = {"type": "url", "url": part.url} if part.url is not None else \
        {"type": "base64", "media_type": part.media_type, "data": part.data}
    return _with_cache({"type": "image", "source": source}, part.cache_control)


def _wire_block(part: ContentPart) -> dict[str, Any] | None:
    """The Anthropic block for one IR part, or None for parts Anthropic cannot take back."""
    if isinstance(part, TextPart):
        # Anthropic rejects empty text blocks.
        return _with_cache({"type": "text", "text": part.text}, part.cache_control) \
            if part.text else None
    if isinstance(part, ImagePart):
        return _wire_image(part)
    if isinstance(part, DocumentPart):
        if part.url is not None:
            source: dict[str, Any] = {"type": "url", "url": part.url}
        elif part.text is not None:
            source = {"type": "text", "media_type": "text/plain", "data": part.text}
        else:
            source = {"type": "base64", "media_type": part.media_type, "data": part.data}
        block = {"type": "document", "source": source}
        if part.title:
            block["title"] = part.title
        return _with_cache(block, part.cache_control)
    if isinstance(part, ToolCallPart):
        return _with_cache({"type": "tool_use", "id": _tool_id(part.id), "name": part.name,
                            "input": tool_input(part.arguments)}, part.cache_control)
    if isinstance(part, ToolResultPart):
        block = {"type": "tool_result", "tool_use_id": _tool_id(part.tool_call_id)}
        if len(part.content) == 1 and isinstance(part.content[0], TextPart) \
                and part.content[0].cache_control is None:
            if part.content[0].text:  # an empty text block would be rejected
                block["content"] = part.content[0].text
        elif part.content:
            block["content"] = [_with_cache({"type": "text", "text": p.text}, p.cache_control)
                                if isinstance(p, TextPart) else _wire_image(p)
                                for p in part.content]
        if part.is_error:
            block["is_error"] = True
        return _with_cache(block, part.cache_control)
    if isinstance(part, ThinkingPart):
        return {"type": "thinking", "thinking": part.text, "signature": part.signature} \
            if part.signature else None
    return {"type": "redacted_thinking", "data": part.data}


def _results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic wants a user turn's tool results before anything else in it."""
    return ([b for b in blocks if b["type"] == "tool_result"]
            + [b for b in blocks if b["type"] != "tool_result"])


def _wire_tool(tool: Tool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        wire["description"] = tool.description
    wire["input_schema"] = dict(tool.parameters)
    if tool.strict is not None:
        wire["strict"] = tool.strict
    return _with_cache(wire, tool.cache_control)


def _wire_tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None and req.parallel_tool_calls is None:
        return None
    wire: dict[str, Any] = {"type": choice.mode if choice else "auto"}
    if choice is not None and choice.name is not None:
        wire["name"] = choice.name
    if req.parallel_tool_calls is not None and wire["type"] != "none":
        wire["disable_parallel_tool_use"] = not req.parallel_tool_calls
    return wire


def _wire_thinking(req: ChatRequest, max_tokens: int, messages: list[dict[str, Any]],
                   options: CodecOptions) -> dict[str, Any] | None:
    r = req.reasoning
    if r is None or options.reasoning is False:
        return None
    if r.budget_tokens is not None:
        # Within a max_tokens the route's output limit lowered: Anthropic refuses a budget of
        # max_tokens or more, and one under 1024.
        budget = min(r.budget_tokens, max_tokens - 1)
        if budget < _MIN_THINKING_BUDGET:
            return None
        thinking: dict[str, Any] = {"type": "enabled", "budget_tokens": budget}
    elif r.adaptive:
        thinking = {"type": "adaptive"}
    elif r.effort and r.effort != "none" and req.surface != "anthropic_messages":
        budget = options.budget_for_effort(r.effort)
        # Anthropic wants budget_tokens < max_tokens, and at least 1024.
        budget = None if budget is None else min(budget, max_tokens - 1)
        if budget is None or budget < _MIN_THINKING_BUDGET:
            return None
        thinking = {"type": "enabled", "budget_tokens": budget}
    else:
        return None
    if req.surface != "anthropic_messages" and not _replayable(messages):
        return None
    return thinking


def _replayable(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn, if it called tools, starts with a thinking block, as
    Anthropic requires of a tool-use loop that runs with thinking on."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            blocks = message["content"]
            if not any(b["type"] == "tool_use" for b in blocks):
                return True
            return blocks[0]["type"] in ("thinking", "redacted_thinking")
    return True
