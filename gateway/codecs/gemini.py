"""Google Gemini API (`models/{model}:generateContent`, `:streamGenerateContent?alt=sse`): the
upstream dialect only (no client surface speaks it). `build_request` writes a
`GenerateContentRequest` from the IR; the answer is read by `gemini_output`, re-exported here,
so this module is the whole codec.

What does not map one to one, and how we carry it:
- the system prompt is `systemInstruction`; a later system turn becomes a user turn's text;
- assistant turns are role `model`; tool results are `functionResponse` parts of a user turn,
  named after the call they answer (Gemini matches them by name and order, not by id), with
  `{"output": text}` or, for an error, `{"error": text}`; images a tool returned follow as
  inline parts;
- a tool call is sent back with the `thoughtSignature` it came with (gemini_output keeps it
  in the call's id); earlier thinking is not sent (named "thinking" in what was dropped);
- images and documents are `inlineData` (base64) or, by URL, `fileData`;
- tools are `functionDeclarations` with their JSON Schema as `parametersJsonSchema`;
  `tool_choice` is `toolConfig.functionCallingConfig` (AUTO / ANY / NONE, one name allowed);
- reasoning becomes `thinkingConfig` (`includeThoughts`, and `thinkingBudget`: the client's
  budget, the effort's budget from CodecOptions, -1 for adaptive, 0 for effort "none");
- JSON mode is `responseMimeType: application/json` (with `responseJsonSchema`);
- `parallel_tool_calls`, `user`, `metadata` and `cache_control` have no Gemini field.
"""
from __future__ import annotations

import json
from typing import Any

from gateway.codecs.gemini_output import (SIGNATURE_SEPARATOR, USAGE_FIELD, StreamDecoder,
                                          call_id, error_in_body, parse_response,
                                          split_call_id, stop_reason, stream_done, usage_from)
from gateway.codecs.media import check_media_allowed
from gateway.codecs.openai_chat import TOOL_ERROR_PREFIX, _has_cache_control
from gateway.types import (ChatRequest, CodecOptions, ContentPart, DocumentPart, ImagePart,
                           Message, TextPart, ThinkingPart, ToolCallPart, ToolChoice,
                           ToolResultPart)

__all__ = ["build_request", "parse_response", "StreamDecoder", "usage_from", "error_in_body",
           "stream_done", "stop_reason", "call_id", "split_call_id", "SIGNATURE_SEPARATOR",
           "USAGE_FIELD"]

_MODES = {"auto": "AUTO", "any": "ANY", "none": "NONE", "tool": "ANY"}


def build_request(req: ChatRequest, *, upstream_model: str, stream: bool,
                  options: CodecOptions, dropped: list[str] | None = None) -> dict[str, Any]:
    """The `GenerateContentRequest` for `req` (the model is in the URL, not the body); what
    it cannot carry is appended to `dropped`. Raises InvalidRequest for content the
    deployment does not accept (see CodecOptions)."""
    dropped = [] if dropped is None else dropped
    check_media_allowed(req, options)
    names = {p.id: p.name for m in req.messages for p in m.content if isinstance(p, ToolCallPart)}
    contents: list[dict[str, Any]] = []
    for message in req.messages:
        parts = _parts(message, names, dropped)
        if not parts:
            continue
        role = "model" if message.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": p.text} for p in req.system]}
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in req.tools]}]
        if req.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling(req.tool_choice)}
        if req.parallel_tool_calls is False:
            dropped.append("parallel_tool_calls")
    config: dict[str, Any] = {}
    if (max_tokens := options.clamp_max_tokens(req.max_tokens)) is not None:
        config["maxOutputTokens"] = max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.stop:
        config["stopSequences"] = list(req.stop)
    if req.response_format is not None and req.response_format.type != "text":
        config["responseMimeType"] = "application/json"
        if req.response_format.schema is not None:
            config["responseJsonSchema"] = dict(req.response_format.schema)
    if (thinking := _thinking(req, options, dropped)) is not None:
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    for name in ("user", "metadata"):
        if getattr(req, name):
            dropped.append(name)
    if _has_cache_control(req):
        dropped.append("cache_control")
    return body


def _parts(message: Message, names: dict[str, str], dropped: list[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ToolResultPart):
            parts.extend(_function_response(part, names))
        elif isinstance(part, ToolCallPart):
            signature = part.signature or split_call_id(part.id)[1]
            try:
                args = json.loads(part.arguments or "{}")
            except ValueError:
                args = {"input": part.arguments}
            wire: dict[str, Any] = {"functionCall": {
                "name": part.name, "args": args if isinstance(args, dict) else {"input": args}}}
            if signature:
                wire["thoughtSignature"] = signature
            parts.append(wire)
        elif isinstance(part, ThinkingPart):
            if "thinking" not in dropped:
                dropped.append("thinking")
        elif (wire := _content_part(part)) is not None:
            parts.append(wire)
    return parts


def _content_part(part: ContentPart) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        if part.data is not None:
            return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
        return {"fileData": {"fileUri": part.url}}
    if isinstance(part, DocumentPart):
        if part.text is not None:
            return {"text": part.text}
        if part.data is not None:
            return {"inlineData": {"mimeType": part.media_type or "application/pdf",
                                   "data": part.data}}
        return {"fileData": {"mimeType": part.media_type or "application/pdf",
                             "fileUri": part.url}}
    return None


def _function_response(part: ToolResultPart, names: dict[str, str]) -> list[dict[str, Any]]:
    text = part.text
    if part.is_error and text.startswith(TOOL_ERROR_PREFIX):
        text = text[len(TOOL_ERROR_PREFIX):]
    name = names.get(part.tool_call_id) or split_call_id(part.tool_call_id)[0]
    out = [{"functionResponse": {"name": name,
                                 "response": {"error" if part.is_error else "output": text}}}]
    out.extend(w for p in part.content if isinstance(p, ImagePart)
               and (w := _content_part(p)) is not None)
    return out


def _declaration(tool) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    declaration["parametersJsonSchema"] = dict(tool.parameters)
    return declaration


def _calling(choice: ToolChoice) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": _MODES[choice.mode]}
    if choice.mode == "tool":
        config["allowedFunctionNames"] = [choice.name]
    return config


def _thinking(req: ChatRequest, options: CodecOptions, dropped: list[str]) -> dict | None:
    """`thinkingConfig` for the request's reasoning, where the route reasons (False: none is
    sent, and the client's field is named in `dropped`)."""
    r = req.reasoning
    if r is None:
        return None
    if options.reasoning is False:
        dropped.append({"anthropic_messages": "thinking", "openai_responses": "reasoning.effort"
                        }.get(req.surface, "reasoning_effort"))
        return None
    if r.effort == "none":
        return {"thinkingBudget": 0}
    if r.budget_tokens:
        budget = r.budget_tokens
    elif r.effort:
        budget = options.budget_for_effort(r.effort)
        budget = -1 if budget is None else budget
    else:
        budget = -1  # adaptive: the model decides
    return {"includeThoughts": True, "thinkingBudget": budget}
