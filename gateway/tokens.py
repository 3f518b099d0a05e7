"""Token estimates for when an upstream reports no usage (marked `estimated` in the ledger).

A byte-length heuristic (~4 characters per token for English, each non-ASCII character about one
token) keeps this offline and O(n); it is used for budgets' reservations and as a fallback only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import orjson


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
