"""The `mock` upstream: deterministic, token-counted completions with no network.

It answers in the OpenAI chat dialect: the reply is "Mock reply: " followed by the last user
message, cut at `max_tokens` (finish_reason "length"). Its usage is reported, counted with
`gateway.tokens`. Useful for demos and for users' own integration tests. Every surface reaches
it: Anthropic Messages and Responses clients through the IR translation, like any other
OpenAI-dialect upstream.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from gateway.tokens import chat_input_tokens, text_tokens

if TYPE_CHECKING:
    from gateway.dialects import Dialect
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
    def __init__(self, body: dict, model: str, dialect: Dialect) -> None:
        self.dialect = dialect
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


def _prompt_text(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return " ".join(prompt)
    return ""


def mock_embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector derived from the text (same text, same vector)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [((digest[i % len(digest)] + i * 31) % 251) / 125.0 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


class MockCompletionResponse(MockResponse):
    """Legacy /completions: the chat reply to the prompt, as `text` choices."""

    def __init__(self, body: dict, model: str, dialect: Dialect) -> None:
        chat_body = {**body, "messages": [{"role": "user", "content": _prompt_text(body.get("prompt"))}]}
        super().__init__(chat_body, model, dialect)
        self._id = self._id.replace("chatcmpl", "cmpl")

    async def json(self) -> dict:
        pieces, finish, usage = mock_completion(self._body)
        return {"id": self._id, "object": "text_completion", "created": self._created,
                "model": self._model, "usage": usage,
                "choices": [{"index": 0, "text": "".join(pieces), "finish_reason": finish,
                             "logprobs": None}]}

    async def events(self) -> AsyncIterator[tuple[str | None, str]]:
        pieces, finish, usage = mock_completion(self._body)
        base = {"id": self._id, "object": "text_completion", "created": self._created,
                "model": self._model}
        for piece in pieces:
            yield None, orjson.dumps({**base, "choices": [
                {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]}).decode()
        yield None, orjson.dumps({**base, "choices": [
            {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}]}).decode()
        yield None, orjson.dumps({**base, "choices": [], "usage": usage}).decode()
        yield None, "[DONE]"


class MockEmbeddingResponse(MockResponse):
    async def json(self) -> dict:
        inputs = self._body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs or []]
        dimensions = self._body.get("dimensions") if isinstance(self._body.get("dimensions"), int) else 8
        tokens = sum(text_tokens(t) for t in texts)
        return {"object": "list", "model": self._model,
                "data": [{"object": "embedding", "index": i, "embedding": mock_embedding(t, dimensions)}
                         for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class MockAdapter:
    async def send(self, *, dialect: Dialect, deployment: Deployment, operation: str, body: dict,
                   stream: bool, request_id: str, forwarded=None) -> MockResponse:
        response = {"completions": MockCompletionResponse,
                    "embeddings": MockEmbeddingResponse}.get(operation, MockResponse)
        return response(body, deployment.upstream_model, dialect)
