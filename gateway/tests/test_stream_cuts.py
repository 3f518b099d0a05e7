"""An upstream stream that ends early, on every API surface and upstream kind, through a live
gateway: the client gets the surface's own error event (never a `[DONE]`, `message_stop` or
`response.completed` that would read as success), the ledger has exactly one
`upstream_error` row, and the route's circuit breaker is charged.

Three ways an upstream stream ends early (the fake's `cut_mode`), after 3 content chunks:
`eof` ends the HTTP response cleanly without the end marker or stop reason (the relay's
`stream_cut`); `close` drops the connection mid-body; `reset` sends a TCP RST. The fake cuts
only once the client has received the 3 chunks (`cut_gate`), so the gateway has read them all
and the outcome does not depend on timing.

Each case runs twice: with the official SDK (what it raises or yields), and with plain httpx
reading the stream to its end (the bytes themselves).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import pytest

from usage.models import UsageRecord

CHUNKS = 3  # content chunks the fake sends before it cuts
REPLY = "Hello from the fake upstream, here is your answer."
# What the gateway records for each cut: the relay's own class for a stream that ended without
# its end marker, the transport's exception class (aiohttp's) for a broken connection.
ERROR_TYPES = {"eof": "stream_cut", "close": "ClientPayloadError", "reset": "connection_reset"}
PROVIDERS = {"gpt-test": "fake-a", "claude-test": "fake-anth"}


@dataclass
class Seen:
    """What a client made of a stream: the request id, the text deltas, and what the SDK
    raised (or, for Responses, the final event types it yielded); `events` are the raw SSE
    events (event name, parsed data or the literal text) when read with httpx."""
    request_id: str = ""
    text: list[str] = field(default_factory=list)
    raised: Exception | None = None
    last_types: list[str] = field(default_factory=list)
    events: list[tuple[str | None, object]] = field(default_factory=list)


def _counting(seen: Seen, gate, text: str) -> None:
    """Count one text delta the client received; at CHUNKS, let the fake cut the stream."""
    if text:
        seen.text.append(text)
        if len(seen.text) == CHUNKS:
            gate.open()


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _sdk_chat(url, key, model, gate) -> Seen:
    stream = _openai(url, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    seen = Seen(request_id=stream.response.headers["x-request-id"])
    try:
        for chunk in stream:
            for choice in chunk.choices:
                _counting(seen, gate, choice.delta.content or "")
    except openai.APIError as exc:
        seen.raised = exc
    return seen


def _sdk_completions(url, key, model, gate) -> Seen:
    stream = _openai(url, key).completions.create(model=model, prompt="Say hello", stream=True)
    seen = Seen(request_id=stream.response.headers["x-request-id"])
    try:
        for chunk in stream:
            for choice in chunk.choices:
                _counting(seen, gate, choice.text or "")
    except openai.APIError as exc:
        seen.raised = exc
    return seen


def _sdk_responses(url, key, model, gate) -> Seen:
    # The SDK yields a Responses `error` event (and `response.failed`) instead of raising.
    stream = _openai(url, key).responses.create(model=model, input="hi", stream=True)
    seen = Seen(request_id=stream.response.headers["x-request-id"])
    types = []
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            _counting(seen, gate, event.delta)
    seen.last_types = types[-2:]
    return seen


def _sdk_messages(url, key, model, gate) -> Seen:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)
    stream = client.messages.create(model=model, max_tokens=100, stream=True,
                                    messages=[{"role": "user", "content": "hi"}])
    seen = Seen(request_id=stream.response.headers["x-request-id"])
    try:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                _counting(seen, gate, event.delta.text)
    except anthropic.APIStatusError as exc:
        seen.raised = exc
    return seen


def _raw(url: str, key: str, path: str, body: dict, gate, delta: Callable) -> Seen:
    """POST with plain httpx and read the SSE bytes as they come; `delta(name, data)` is the
    text an event carries."""
    seen = Seen()
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=20,
                      headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        seen.request_id = response.headers["x-request-id"]
        name, data = None, []
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                text = "\n".join(data)
                parsed = text if text == "[DONE]" else json.loads(text)
                seen.events.append((name, parsed))
                if isinstance(parsed, dict):
                    _counting(seen, gate, delta(name, parsed))
                name, data = None, []
    return seen


def _choice_text(name, data) -> str:
    return "".join((c.get("delta") or {}).get("content") or c.get("text") or ""
                   for c in data.get("choices") or [])


def _raw_chat(url, key, model, gate) -> Seen:
    return _raw(url, key, "/v1/chat/completions", {
        "model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        gate, _choice_text)


def _raw_completions(url, key, model, gate) -> Seen:
    return _raw(url, key, "/v1/completions",
                {"model": model, "stream": True, "prompt": "Say hello"}, gate, _choice_text)


def _raw_responses(url, key, model, gate) -> Seen:
    return _raw(url, key, "/v1/responses", {"model": model, "stream": True, "input": "hi"},
                gate, lambda name, data: data.get("delta") or ""
                if name == "response.output_text.delta" else "")


def _raw_messages(url, key, model, gate) -> Seen:
    return _raw(url, key, "/v1/messages", {
        "model": model, "stream": True, "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]},
        gate, lambda name, data: (data.get("delta") or {}).get("text") or ""
        if name == "content_block_delta" else "")


def _chat_ending(events) -> None:
    """OpenAI Chat Completions and legacy completions: the error payload, then `[DONE]`; no
    chunk ever said the answer had finished."""
    assert events[-1] == (None, "[DONE]") and "[DONE]" not in [d for _, d in events[:-1]]
    error = events[-2][1]["error"]
    # (`code` is "upstream_error" when passed through, null when translated.)
    assert error["type"] == "api_error" and "the upstream stream failed" in error["message"]
    assert not any(c.get("finish_reason") for _, d in events[:-2] if isinstance(d, dict)
                   for c in d.get("choices") or [])


def _responses_ending(events) -> None:
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    assert "response.completed" not in names and "response.incomplete" not in names
    assert events[-1][1]["response"]["status"] == "failed"


def _messages_ending(events) -> None:
    names = [name for name, _ in events]
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": events[-1][1]["error"]["message"]}})
    assert "message_stop" not in names
    assert not any(d.get("delta", {}).get("stop_reason") for n, d in events
                   if n == "message_delta")


@dataclass(frozen=True)
class Case:
    surface: str
    model: str
    sdk: Callable[..., Seen]
    raw: Callable[..., Seen]
    ending: Callable[[list], None]

    @property
    def id(self) -> str:
        return f"{self.surface}-{self.model}"


CASES = [
    Case("openai.chat", "gpt-test", _sdk_chat, _raw_chat, _chat_ending),        # passed through
    Case("openai.chat", "claude-test", _sdk_chat, _raw_chat, _chat_ending),     # translated
    Case("openai.completions", "gpt-test", _sdk_completions, _raw_completions, _chat_ending),
    Case("openai.responses", "gpt-test", _sdk_responses, _raw_responses, _responses_ending),
    Case("openai.responses", "claude-test", _sdk_responses, _raw_responses, _responses_ending),
    Case("anthropic.messages", "claude-test", _sdk_messages, _raw_messages,
         _messages_ending),                                                     # passed through
    Case("anthropic.messages", "gpt-test", _sdk_messages, _raw_messages, _messages_ending),
]


@pytest.fixture
def both_upstreams(fake_provider, fake_anthropic_provider):
    return fake_provider


def _route(gateway_url: str, provider: str) -> dict:
    detail = httpx.get(f"{gateway_url}/health/detailed", timeout=10).json()
    [route] = detail["providers"][provider]["routes"]
    return route


@pytest.mark.parametrize("client", ["sdk", "httpx"])
@pytest.mark.parametrize("mode", ["eof", "close", "reset"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_stream_cut_by_the_upstream_ends_with_the_surface_error_and_an_upstream_error_row(
        gateway_url, both_upstreams, api_key, ledger_rows, case, mode, client):
    provider = PROVIDERS[case.model]
    gate = both_upstreams.gate()
    both_upstreams.behave(provider, cut_after=CHUNKS, cut_mode=mode, cut_gate=gate)

    seen = (case.sdk if client == "sdk" else case.raw)(gateway_url, api_key, case.model, gate)

    # The client got the chunks sent before the cut, then the surface's error, and no success.
    assert len(seen.text) == CHUNKS and REPLY.startswith("".join(seen.text))
    if client == "httpx":
        case.ending(seen.events)
    elif case.surface == "openai.responses":
        assert seen.last_types == ["error", "response.failed"]
    else:
        assert seen.raised is not None, "the SDK took a cut stream for a complete one"
        assert "the upstream stream failed" in str(seen.raised)
    assert len(both_upstreams.calls(provider)) == 1  # never retried once bytes were sent

    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert row.request_id == seen.request_id
    assert (row.surface, row.public_model, row.provider_name, row.stream) == \
        (case.surface, case.model, provider, True)
    assert (row.status, row.http_status, row.error_type) == \
        ("upstream_error", 200, ERROR_TYPES[mode])
    # Billed for what was produced: the prompt and the streamed output, estimated.
    assert row.usage_source == "estimated"
    assert row.input_tokens > 0 and row.output_tokens > 0 and row.cost_usd > 0

    route = _route(gateway_url, provider)
    assert (route["consecutive_failures"], route["last_error_class"]) == (1, ERROR_TYPES[mode])
    assert route["in_flight"] == 0
