"""Amazon Bedrock Converse, upstream side: the body of `POST /model/{modelId}/converse` (and
`/converse-stream`) built from the IR, its answer and its event stream read back.

The event stream is AWS event-stream framing, not SSE; the `bedrock` transport
(gateway.adapters.bedrock) decodes it and hands each event on as (`:event-type`, its JSON
payload), so this module reads `messageStart`, `contentBlockStart`, `contentBlockDelta`,
`contentBlockStop`, `messageStop` and `metadata` (the last one: usage) like any other stream.
An exception the stream carries (`throttlingException`, `modelStreamErrorException`, …)
arrives as an event named after it and ends the stream with a StreamError.

What does not map one to one:
- Converse counts `inputTokens` without cache reads and writes (`cacheReadInputTokens`,
  `cacheWriteInputTokens`), as Anthropic does; the IR counts them in.
- Anthropic-style `cache_control` on a part becomes a `cachePoint` block after it (in the
  system prompt, the tool list or a message).
- Thinking goes back as `reasoningContent` only with its signature (or redacted); a thinking
  budget is sent as `additionalModelRequestFields.thinking` (Anthropic's form, the one Bedrock
  documents for Converse) where the route reasons (CodecOptions.reasoning true).
- Images travel as bytes (`png`, `jpeg`, `gif`, `webp`): an image by URL has no Converse form
  and is dropped ("image_url"); JSON mode and schemas have none either ("response_format").
- `tool_choice: none` has no Converse form: the tools stay, the choice is dropped.
- `guardrail_intervened` and `content_filtered` stop reasons are refusals.
"""
from __future__ import annotations

import re
from typing import Any

from gateway.codecs.anthropic_messages_output import tool_arguments, tool_input
from gateway.codecs.fields import count
from gateway.codecs.media import check_media_allowed
from gateway.errors import UpstreamFailed
from gateway.types import (BlockStop, ChatRequest, ChatResponse, CodecOptions, ContentPart,
                           DocumentPart, ImagePart, MessageStart, RedactedThinking,
                           RedactedThinkingPart, SignatureDelta, Stop, StopReason, StreamError,
                           StreamEvent, TextDelta, TextPart, ThinkingDelta, ThinkingPart,
                           ToolArgsDelta, ToolCallPart, ToolCallStart, ToolResultPart, Usage,
                           UsageUpdate)

__all__ = ["build_request", "parse_response", "StreamDecoder", "usage_from", "error_in_body",
           "stream_done", "stop_reason"]

_STOP: dict[str, StopReason] = {
    "end_turn": "end_turn", "tool_use": "tool_use", "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence", "guardrail_intervened": "refusal",
    "content_filtered": "refusal", "model_context_window_exceeded": "max_tokens",
}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/gif": "gif", "image/webp": "webp"}
_DOCUMENT_FORMATS = {"application/pdf": "pdf", "text/csv": "csv", "text/html": "html",
                     "text/plain": "txt", "text/markdown": "md", "application/msword": "doc",
                     "application/vnd.openxmlformats-officedocument.wordprocessingml.document":
                         "docx",
                     "application/vnd.ms-excel": "xls",
                     "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx"}
_CACHE_POINT = {"cachePoint": {"type": "default"}}
_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
# A document's name may hold only these (Converse rejects others).
_DOC_NAME_INVALID = re.compile(r"[^a-zA-Z0-9 ()\[\]-]")
_MIN_THINKING_BUDGET = 1024


def stop_reason(wire: str | None) -> StopReason:
    return _STOP.get(wire or "", "end_turn")


def usage_from(usage: dict[str, Any]) -> Usage:
    """IR usage from Converse `usage` (cache reads and writes added into `input_tokens`)."""
    read = count(usage.get("cacheReadInputTokens"))
    write = count(usage.get("cacheWriteInputTokens"))
    return Usage(input_tokens=count(usage.get("inputTokens")) + read + write,
                 output_tokens=count(usage.get("outputTokens")),
                 cached_tokens=read, cache_creation_tokens=write)


def error_in_body(data: dict[str, Any]) -> bool:
    """A 200 whose body is an error (`{"message": …}` and no `output`)."""
    return "output" not in data and isinstance(data.get("message"), str)


def stream_done(event: str | None, data: str) -> bool:
    """`metadata`, the stream's last event (after `messageStop`), carries the usage."""
    return event == "metadata"


def _tool_id(tool_call_id: str) -> str:
    return _TOOL_ID_INVALID.sub("_", tool_call_id) or "tool"


def _with_cache(blocks: list[dict[str, Any]], block: dict[str, Any],
                cache_control: Any) -> None:
    blocks.append(block)
    if cache_control is not None:
        blocks.append(dict(_CACHE_POINT))


def _image(part: ImagePart, dropped: list[str]) -> dict[str, Any] | None:
    fmt = _IMAGE_FORMATS.get((part.media_type or "").lower())
    if part.data is None or fmt is None:
        dropped.append("image_url" if part.url is not None else f"image ({part.media_type})")
        return None
    return {"image": {"format": fmt, "source": {"bytes": part.data}}}


def _document(part: DocumentPart, index: int, dropped: list[str]) -> dict[str, Any] | None:
    if part.text is not None:
        return {"text": part.text}
    fmt = _DOCUMENT_FORMATS.get((part.media_type or "").lower())
    if part.data is None or fmt is None:
        dropped.append("document url" if part.url is not None
                       else f"document ({part.media_type})")
        return None
    name = _DOC_NAME_INVALID.sub(" ", part.title or "").strip() or f"document {index + 1}"
    return {"document": {"format": fmt, "name": name[:200], "source": {"bytes": part.data}}}


def _tool_result(part: ToolResultPart, dropped: list[str]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for p in part.content:
        if isinstance(p, TextPart):
            if p.text:
                content.append({"text": p.text})
        elif (image := _image(p, dropped)) is not None:
            content.append(image)
    result: dict[str, Any] = {"toolUseId": _tool_id(part.tool_call_id),
                              "content": content or [{"text": ""}]}
    if part.is_error:
        result["status"] = "error"
    return {"toolResult": result}


def _blocks(parts: tuple[ContentPart, ...], dropped: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    documents = 0
    for part in parts:
        block: dict[str, Any] | None = None
        if isinstance(part, TextPart):
            block = {"text": part.text} if part.text else None
        elif isinstance(part, ImagePart):
            block = _image(part, dropped)
        elif isinstance(part, DocumentPart):
            block = _document(part, documents, dropped)
            documents += 1
        elif isinstance(part, ToolCallPart):
            block = {"toolUse": {"toolUseId": _tool_id(part.id), "name": part.name,
                                 "input": tool_input(part.arguments)}}
        elif isinstance(part, ToolResultPart):
            block = _tool_result(part, dropped)
        elif isinstance(part, ThinkingPart):
            # Without its signature, reasoning cannot be replayed to the model that made it.
            if part.signature:
                block = {"reasoningContent": {"reasoningText": {"text": part.text,
                                                                "signature": part.signature}}}
        elif isinstance(part, RedactedThinkingPart):
            block = {"reasoningContent": {"redactedContent": part.data}}
        if block is not None:
            _with_cache(blocks, block, getattr(part, "cache_control", None))
    return blocks


def _results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return ([b for b in blocks if "toolResult" in b]
            + [b for b in blocks if "toolResult" not in b])


def _tool_config(req: ChatRequest, dropped: list[str]) -> dict[str, Any]:
    tools: list[dict[str, Any]] = []
    for tool in req.tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": dict(tool.parameters)}}
        if tool.description:
            spec["description"] = tool.description
        _with_cache(tools, {"toolSpec": spec}, tool.cache_control)
    config: dict[str, Any] = {"tools": tools}
    choice = req.tool_choice
    if choice is not None:
        if choice.mode == "auto":
            config["toolChoice"] = {"auto": {}}
        elif choice.mode == "any":
            config["toolChoice"] = {"any": {}}
        elif choice.mode == "tool":
            config["toolChoice"] = {"tool": {"name": choice.name}}
        else:
            dropped.append("tool_choice")
    if req.parallel_tool_calls is False:
        dropped.append("parallel_tool_calls")
    return config


def _thinking(req: ChatRequest, max_tokens: int | None, options: CodecOptions,
              dropped: list[str]) -> dict[str, Any] | None:
    r = req.reasoning
    if r is None or r.effort == "none":
        return None
    budget = r.budget_tokens
    if budget is None and r.effort and options.reasoning:
        budget = options.budget_for_effort(r.effort)
        if budget is not None and max_tokens is not None:
            budget = min(budget, max_tokens - 1)
    if options.reasoning is not True or budget is None or budget < _MIN_THINKING_BUDGET:
        dropped.append("thinking" if req.surface == "anthropic_messages"
                       else "reasoning.effort" if req.surface == "openai_responses"
                       else "reasoning_effort")
        return None
    return {"type": "enabled", "budget_tokens": budget}


def build_request(req: ChatRequest, *, upstream_model: str, stream: bool,
                  options: CodecOptions, dropped: list[str] | None = None) -> dict[str, Any]:
    """The Converse body for `req` (the model and the streaming mode are in the URL); what it
    cannot carry is appended to `dropped`. Raises InvalidRequest for content the deployment
    does not accept (see CodecOptions)."""
    dropped = [] if dropped is None else dropped
    check_media_allowed(req, options)
    system: list[dict[str, Any]] = []
    for part in req.system:
        if part.text:
            _with_cache(system, {"text": part.text}, part.cache_control)
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in req.messages:
        if message.role == "system":
            # Converse has no mid-conversation instructions; they join the system prompt.
            system.extend({"text": p.text} for p in message.content
                          if isinstance(p, TextPart) and p.text)
            continue
        blocks = _blocks(message.content, dropped)
        if not blocks:
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((message.role, blocks))
    body: dict[str, Any] = {"messages": [
        {"role": role, "content": _results_first(blocks) if role == "user" else blocks}
        for role, blocks in turns]}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = options.clamp_max_tokens(req.max_tokens)
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    if req.temperature is not None:
        inference["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        inference["topP"] = req.top_p
    if req.stop:
        inference["stopSequences"] = list(req.stop)[:4]
    if inference:
        body["inferenceConfig"] = inference
    if req.tools:
        body["toolConfig"] = _tool_config(req, dropped)
    if thinking := _thinking(req, max_tokens, options, dropped):
        body["additionalModelRequestFields"] = {"thinking": thinking}
    if req.response_format is not None and req.response_format.type != "text":
        dropped.append("text.format" if req.surface == "openai_responses"
                       else "output_config" if req.surface == "anthropic_messages"
                       else "response_format")
    if req.metadata:
        body["requestMetadata"] = {str(k)[:256]: str(v)[:256] for k, v in req.metadata.items()}
    return body


def _part(block: dict[str, Any]) -> ContentPart | None:
    if isinstance(block.get("text"), str):
        return TextPart(block["text"])
    if isinstance(block.get("toolUse"), dict):
        use = block["toolUse"]
        return ToolCallPart(id=str(use.get("toolUseId") or ""), name=str(use.get("name") or ""),
                            arguments=tool_arguments(use.get("input")))
    if isinstance(block.get("reasoningContent"), dict):
        reasoning = block["reasoningContent"]
        if isinstance(reasoning.get("redactedContent"), str):
            return RedactedThinkingPart(reasoning["redactedContent"])
        text = reasoning.get("reasoningText") or {}
        return ThinkingPart(str(text.get("text") or ""), text.get("signature") or None)
    return None


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """The IR of a Converse answer; raises UpstreamFailed when it has no message."""
    message = (body.get("output") or {}).get("message") if isinstance(body.get("output"),
                                                                        dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamFailed("the upstream returned a Converse answer without a message")
    content = tuple(p for p in (_part(b) for b in message["content"] if isinstance(b, dict))
                    if p is not None)
    usage = body.get("usage")
    return ChatResponse(id="", content=content, stop_reason=stop_reason(body.get("stopReason")),
                        usage=usage_from(usage) if isinstance(usage, dict) else Usage())


class StreamDecoder:
    """ConverseStream events -> IR events. Converse numbers its content blocks
    (`contentBlockIndex`) as the IR does; a text or reasoning block starts with its first
    delta, a tool block with `contentBlockStart`. `messageStop` gives the stop reason,
    `metadata` the usage; an exception event ends the stream with a StreamError."""

    def __init__(self) -> None:
        self._open: set[int] = set()
        self._failed = False

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        if self._failed or not isinstance(data, dict):
            return []
        index = data.get("contentBlockIndex")
        index = index if isinstance(index, int) else 0
        if event == "messageStart":
            return [MessageStart()]
        if event == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                self._open.add(index)
                return [ToolCallStart(index, str(use.get("toolUseId") or ""),
                                      str(use.get("name") or ""))]
            return []
        if event == "contentBlockDelta":
            self._open.add(index)
            return self._delta(index, data.get("delta") or {})
        if event == "contentBlockStop":
            self._open.discard(index)
            return [BlockStop(index)]
        if event == "messageStop":
            return self.finish() + [Stop(stop_reason(data.get("stopReason")))]
        if event == "metadata":
            usage = data.get("usage")
            return [UsageUpdate(usage_from(usage))] if isinstance(usage, dict) else []
        if event and (event.endswith("Exception") or event == "error"):
            self._failed = True
            return [StreamError(str(data.get("message") or f"the upstream sent {event}"),
                                _error_type(event))]
        return []

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> list[StreamEvent]:
        if isinstance(delta.get("text"), str):
            return [TextDelta(index, delta["text"])]
        if isinstance(delta.get("toolUse"), dict):
            return [ToolArgsDelta(index, str(delta["toolUse"].get("input") or ""))]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            if isinstance(reasoning.get("text"), str):
                return [ThinkingDelta(index, reasoning["text"])]
            if isinstance(reasoning.get("signature"), str):
                return [SignatureDelta(index, reasoning["signature"])]
            if isinstance(reasoning.get("redactedContent"), str):
                return [RedactedThinking(index, reasoning["redactedContent"])]
        return []

    def finish(self) -> list[StreamEvent]:
        if self._failed:
            return []
        out: list[StreamEvent] = [BlockStop(i) for i in sorted(self._open)]
        self._open.clear()
        return out


def _error_type(event: str) -> str:
    """The gateway's (OpenAI's) error type for a Bedrock stream exception."""
    return {"throttlingException": "rate_limit_error",
            "serviceUnavailableException": "overloaded_error",
            "validationException": "invalid_request_error"}.get(event, "api_error")
