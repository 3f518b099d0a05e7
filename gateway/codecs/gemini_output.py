"""Google Gemini API, reading the answer: a `GenerateContentResponse` (from `generateContent`,
or one chunk of `streamGenerateContent?alt=sse`) into the IR.

- Parts of the first candidate, in order: `text` -> text; `text` with `thought: true` ->
  thinking (its `thoughtSignature` as the signature); `functionCall` -> a tool call whose
  arguments are the JSON text of `args`, and whose `thoughtSignature` is kept on the call and
  in its id (`<id>__thought__<signature>`), which every surface shows its client and every
  client hands back with the result, so `build_request` returns the signature on the next
  turn, as Gemini requires of function calling with thinking models. A signature on a plain
  text part is not kept (Gemini does not require it back).
- `finishReason`: STOP -> end_turn (tool_use after a call), MAX_TOKENS -> max_tokens, the
  safety and policy blocks (SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII,
  IMAGE_SAFETY, ...) -> refusal; a prompt blocked outright (`promptFeedback.blockReason`, no
  candidates) -> an empty answer with stop reason refusal.
- `usageMetadata`: input = promptTokenCount (+ toolUsePromptTokenCount), of which
  cachedContentTokenCount are cache reads; output = candidatesTokenCount +
  thoughtsTokenCount, of which thoughtsTokenCount are reasoning; image and audio tokens from
  the per-modality details.
A stream has no end marker: it is complete once a chunk carried a `finishReason` (or the
prompt was blocked); each chunk's `usageMetadata` is the running total.
"""
from __future__ import annotations

import json
from typing import Any

from gateway.codecs.fields import count
from gateway.codecs.ids import new_tool_call_id
from gateway.errors import UpstreamFailed
from gateway.types import (BlockStop, ChatResponse, ContentPart, MessageStart, SignatureDelta,
                           Stop, StopReason, StreamError, StreamEvent, TextDelta, TextPart,
                           ThinkingDelta, ThinkingPart, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, Usage, UsageUpdate)

SIGNATURE_SEPARATOR = "__thought__"
USAGE_FIELD = "usageMetadata"
_REFUSALS = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                       "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
                       "LANGUAGE"})


def call_id(base: str | None, signature: str | None) -> str:
    """The id clients see for a function call: Gemini's own (or a fresh one), with the
    call's thought signature appended."""
    base = base or new_tool_call_id()
    return f"{base}{SIGNATURE_SEPARATOR}{signature}" if signature else base


def split_call_id(value: str) -> tuple[str, str | None]:
    """(id, thought signature or None) of an id made by `call_id`."""
    base, sep, signature = value.partition(SIGNATURE_SEPARATOR)
    return (base, signature) if sep and signature else (value, None)


def stop_reason(finish: str | None, *, called_tools: bool) -> StopReason:
    if finish in _REFUSALS:
        return "refusal"
    if finish == "MAX_TOKENS":
        return "max_tokens"
    return "tool_use" if called_tools else "end_turn"


def usage_from(usage: dict[str, Any]) -> Usage:
    """IR usage from Gemini's `usageMetadata`."""
    thoughts = count(usage.get("thoughtsTokenCount"))

    def modality(key: str, name: str) -> int:
        return sum(count(d.get("tokenCount")) for d in usage.get(key) or []
                   if isinstance(d, dict) and d.get("modality") == name)

    return Usage(input_tokens=count(usage.get("promptTokenCount"))
                 + count(usage.get("toolUsePromptTokenCount")),
                 output_tokens=count(usage.get("candidatesTokenCount")) + thoughts,
                 cached_tokens=count(usage.get("cachedContentTokenCount")),
                 reasoning_tokens=thoughts,
                 image_input_tokens=modality("promptTokensDetails", "IMAGE"),
                 audio_input_tokens=modality("promptTokensDetails", "AUDIO"),
                 image_output_tokens=modality("candidatesTokensDetails", "IMAGE"),
                 audio_output_tokens=modality("candidatesTokensDetails", "AUDIO"))


def error_in_body(data: dict[str, Any]) -> bool:
    return isinstance(data.get("error"), dict)


def stream_done(event: str | None, data: str) -> bool:
    # No end marker: the decoder's Stop (at finishReason) completes the stream.
    return False


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def _parts(candidate: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = (candidate or {}).get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts or [] if isinstance(p, dict)]


def _blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _call(part: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """(id, name, arguments JSON, signature) of a `functionCall` part."""
    call = part["functionCall"]
    signature = part.get("thoughtSignature") or None
    args = call.get("args") if isinstance(call.get("args"), dict) else {}
    return (call_id(call.get("id"), signature), str(call.get("name") or ""),
            json.dumps(args, ensure_ascii=False), signature)


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """The IR of a `GenerateContentResponse`; raises UpstreamFailed when it is not one."""
    candidate = _candidate(body)
    if candidate is None and not _blocked(body):
        raise UpstreamFailed("the upstream returned a response without candidates")
    content: list[ContentPart] = []
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            id_, name, arguments, signature = _call(part)
            content.append(ToolCallPart(id=id_, name=name, arguments=arguments,
                                        signature=signature))
        elif isinstance(part.get("text"), str):
            if part.get("thought"):
                content.append(ThinkingPart(part["text"], part.get("thoughtSignature") or None))
            elif content and isinstance(content[-1], TextPart):
                content[-1] = TextPart(content[-1].text + part["text"])
            elif part["text"]:
                content.append(TextPart(part["text"]))
    usage = body.get(USAGE_FIELD)
    called = any(isinstance(p, ToolCallPart) for p in content)
    finish = candidate.get("finishReason") if candidate else "SAFETY"
    return ChatResponse(id=str(body.get("responseId") or ""), content=tuple(content),
                        stop_reason=stop_reason(finish, called_tools=called),
                        usage=usage_from(usage) if isinstance(usage, dict) else Usage(),
                        model=body.get("modelVersion"))


class StreamDecoder:
    """`streamGenerateContent?alt=sse` chunks -> IR events. Consecutive text (or thought)
    parts continue one block; each function call is a whole block of its own (Gemini sends a
    call in one part). An `error` object ends the stream with a StreamError."""

    def __init__(self) -> None:
        self._started = False
        self._open: tuple[int, str] | None = None
        self._next = 0
        self._called = False
        self._stopped = False
        self._failed = False
        self._usage: Usage | None = None

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        if self._failed or self._stopped:
            return []
        if error_in_body(data):
            self._failed = True
            error = data["error"]
            return [StreamError(str(error.get("message") or "upstream error"),
                                str(error.get("status") or "api_error"))]
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(MessageStart(id=data.get("responseId"), model=data.get("modelVersion")))
        candidate = _candidate(data)
        for part in _parts(candidate):
            out.extend(self._part(part))
        if isinstance(data.get(USAGE_FIELD), dict):
            usage = usage_from(data[USAGE_FIELD])
            if usage != self._usage:
                self._usage = usage
                out.append(UsageUpdate(usage))
        finish = candidate.get("finishReason") if candidate else None
        if finish or (candidate is None and _blocked(data)):
            out.extend(self.finish())
            self._stopped = True
            out.append(Stop(stop_reason(finish or "SAFETY", called_tools=self._called)))
        return out

    def _part(self, part: dict[str, Any]) -> list[StreamEvent]:
        if isinstance(part.get("functionCall"), dict):
            id_, name, arguments, _ = _call(part)
            out = self.finish()
            index, self._next = self._next, self._next + 1
            self._called = True
            return [*out, ToolCallStart(index, id_, name), ToolArgsDelta(index, arguments),
                    BlockStop(index)]
        if not isinstance(part.get("text"), str):
            return []
        thought = bool(part.get("thought"))
        if not thought and not part["text"]:
            return []  # e.g. a part holding only the signature of a text answer
        out, index = self._block("thinking" if thought else "text")
        out.append(ThinkingDelta(index, part["text"]) if thought else TextDelta(index, part["text"]))
        if thought and part.get("thoughtSignature"):
            out.append(SignatureDelta(index, str(part["thoughtSignature"])))
        return out

    def _block(self, kind: str) -> tuple[list[StreamEvent], int]:
        if self._open is not None and self._open[1] == kind:
            return [], self._open[0]
        out = self.finish()
        self._open = (self._next, kind)
        self._next += 1
        return out, self._open[0]

    def finish(self) -> list[StreamEvent]:
        if self._open is None or self._failed:
            return []
        index, self._open = self._open[0], None
        return [BlockStop(index)]
