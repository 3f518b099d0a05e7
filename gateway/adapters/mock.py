"""The `mock` upstream: deterministic, token-counted completions with no network.

It answers in the OpenAI chat dialect: the reply is "Mock reply: " followed by the last user
message, cut at `max_tokens` (finish_reason "length"). Its usage is reported, counted with
`gateway.tokens`. Useful for demos and for users' own integration tests.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson

from gateway.tokens import chat_input_tokens, text_tokens
from providers.selectors import Deployment


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, dict) and p.get("type") == "text")
    return ""


def mock_completion(body: dict) -> tuple[list[str], str, dict]:
    """(reply pieces, finish reason, usage) for an OpenAI chat body; pure."""
    words = ("Mock reply: " + (_last_user_text(body.get("messages")) or "hello")).split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if isinstance(limit, int) and limit > 0:
        kept, used = [], 0
        for piece in pieces:
            cost = text_tokens(piece)
            if used + cost > limit:
                finish = "length"
                break
            kept.append(piece)
            used += cost
        pieces = kept
    prompt = chat_input_tokens(body.get("messages") or [], tools=body.get("tools"))
    completion = sum(text_tokens(p) for p in pieces)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    return pieces, finish, usage


class MockResponse:
    dialect = "openai_chat"

    def __init__(self, body: dict, model: str) -> None:
        self._body = body
        self._model = model
        self._id = f"chatcmpl-mock{int(time.time() * 1000)}"
        self._created = int(time.time())

    async def json(self) -> dict:
        pieces, finish, usage = mock_completion(self._body)
        return {"id": self._id, "object": "chat.completion", "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": "".join(pieces)}}],
                "usage": usage}

    async def events(self) -> AsyncIterator[tuple[str | None, str]]:
        pieces, finish, usage = mock_completion(self._body)
        base = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model}

        def chunk(delta: dict, finish_reason: str | None = None) -> str:
            return orjson.dumps({**base, "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}).decode()

        yield None, chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            yield None, chunk({"content": piece})
        yield None, chunk({}, finish)
        yield None, orjson.dumps({**base, "choices": [], "usage": usage}).decode()
        yield None, "[DONE]"

    async def close(self) -> None:
        return None


class MockAdapter:
    dialect = "openai_chat"

    async def send(self, *, deployment: Deployment, path: str, body: dict, stream: bool,
                   request_id: str) -> MockResponse:
        return MockResponse(body, deployment.upstream_model)
