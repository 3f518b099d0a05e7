"""Token estimates for when an upstream reports no usage (marked `estimated` in the ledger).

A byte-length heuristic (~4 characters per token for English, each non-ASCII character about one
token) keeps this offline and O(n); it is used for budgets' reservations and as a fallback only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import orjson

from gateway.types import (ChatRequest, DocumentPart, ImagePart, TextPart, ThinkingPart,
                           ToolCallPart, ToolResultPart)


def text_tokens(text: str) -> int:
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def chat_input_tokens(messages: Iterable[object], *, tools: object = None) -> int:
    """Estimate for an OpenAI-style message list: content text plus a small per-message overhead."""
    total = 0
    for message in messages:
        total += 4
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                total += text_tokens(content)
            elif content is not None:
                total += text_tokens(orjson.dumps(content).decode())
            if message.get("tool_calls"):
                total += text_tokens(orjson.dumps(message["tool_calls"]).decode())
    if tools:
        total += text_tokens(orjson.dumps(tools).decode())
    return total + 3


# An image's share of the prompt when only its bytes are known (OpenAI's high-detail tile cost
# for a typical picture); estimates never decode images.
IMAGE_TOKENS = 765


def request_input_tokens(request: ChatRequest) -> int:
    """Estimate for a request in the typed IR (any surface): system prompt, each turn's text,
    thinking, tool calls and results, documents' text, tool schemas, and IMAGE_TOKENS per
    image; with the same per-message overhead as `chat_input_tokens`."""
    total = 3 + sum(text_tokens(part.text) for part in request.system)
    for message in request.messages:
        total += 4
        for part in message.content:
            total += _part_tokens(part)
    if request.tools:
        total += text_tokens(orjson.dumps([
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in request.tools]).decode())
    return total


def _part_tokens(part: object) -> int:
    if isinstance(part, (TextPart, ThinkingPart)):
        return text_tokens(part.text)
    if isinstance(part, ToolCallPart):
        return text_tokens(part.name) + text_tokens(part.arguments)
    if isinstance(part, ToolResultPart):
        return sum(_part_tokens(p) for p in part.content)
    if isinstance(part, ImagePart):
        return IMAGE_TOKENS
    if isinstance(part, DocumentPart):
        # Base64 carries 3 bytes in 4 characters; a PDF page of text is roughly that dense.
        return text_tokens(part.text or "") + len(part.data or "") * 3 // 16
    return 0
