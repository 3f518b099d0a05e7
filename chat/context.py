"""What a chat turn sends upstream: the session's history, trimmed to the model's context
window, as a typed `ChatRequest`.

The window is `GATEWAY_CHAT_CONTEXT_TOKENS` (or the model's entry in
`GATEWAY_CHAT_CONTEXT_TOKENS_BY_MODEL`), shared by the prompt and the answer: the history may
use the window less the answer's `max_tokens`. Sizes are estimates (gateway.tokens), the same
ones budgets reserve with. The oldest turns go first; the newest user turn is always sent.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

from gateway.tokens import text_tokens
from gateway.types import ChatRequest, Message, TextPart

# Per-message framing overhead, as gateway.tokens counts it.
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 3
# The least room the history keeps, whatever the window and max_tokens say.
MIN_HISTORY_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str


def turn_tokens(turn: Turn) -> int:
    return MESSAGE_OVERHEAD + text_tokens(turn.content)


def context_window(model: str) -> int:
    """The context window (prompt + answer, in estimated tokens) chat assumes for `model`."""
    return settings.GATEWAY_CHAT_CONTEXT_TOKENS_BY_MODEL.get(model,
                                                             settings.GATEWAY_CHAT_CONTEXT_TOKENS)


def history_budget(*, window: int, max_tokens: int) -> int:
    return max(MIN_HISTORY_TOKENS, window - max_tokens)


def history_trim(turns: Sequence[Turn], *, budget_tokens: int) -> tuple[list[Turn], int]:
    """The newest turns whose estimated size fits `budget_tokens` (the last turn always, even
    when it alone is larger), starting with a user turn (some upstreams require it). Returns
    them in order with how many older turns were left out."""
    kept: list[Turn] = []
    used = REQUEST_OVERHEAD
    for turn in reversed(turns):
        cost = turn_tokens(turn)
        if kept and used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept, len(turns) - len(kept)


def chat_request(*, model: str, turns: Sequence[Turn], max_tokens: int, stream: bool = True,
                 system: str = "", temperature: float | None = None) -> ChatRequest:
    """A request in the IR: every upstream kind is reached through its codec."""
    return ChatRequest(
        model=model,
        messages=tuple(Message(role=t.role, content=(TextPart(t.content),)) for t in turns),
        surface="openai_chat",
        system=(TextPart(system),) if system else (),
        max_tokens=max_tokens,
        temperature=temperature,
        stream=stream,
        include_usage=True,
    )
