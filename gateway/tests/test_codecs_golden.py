"""Golden transcripts: recorded-style upstream SSE streams (golden/*.sse, one per scenario and
upstream dialect) are decoded into IR events and encoded for every client surface.

Each translation is checked three ways:
- event by event against the reviewed expectation in golden/<stream>.expected.json;
- the IR alone reassembles exactly what the upstream sent (text, thinking, signature, tool-call
  arguments byte for byte, stop reason, usage);
- the official `anthropic` and `openai` SDK clients, given the surface's SSE bytes through an
  in-memory transport, parse the stream with their own accumulators into that same content.

After an intended change to the translation, regenerate the expectations and review the diff:
    .venv/bin/python gateway/tests/test_codecs_golden.py --regenerate
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

if __name__ == "__main__":  # run as a script: make `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.codecs import anthropic_messages, openai_chat, openai_responses  # noqa: E402
from gateway.types import (StreamError, StreamEvent, TextDelta, ThinkingDelta,  # noqa: E402
                           SignatureDelta, Stop, ToolArgsDelta, ToolCallStart, Usage, UsageUpdate)

GOLDEN = Path(__file__).parent / "golden"
MODEL = "public-model"
REQUEST_ID = "req_golden"
CREATED = 1700000000
SURFACES = ("anthropic_messages", "openai_chat", "openai_responses")


@dataclass(frozen=True)
class Expected:
    """What the upstream stream says, independent of any wire format."""
    text: str = ""
    thinking: str = ""
    signature: str | None = None
    tools: tuple[tuple[str, str, str], ...] = ()  # (id, name, exact JSON arguments)
    stop: str | None = None
    usage: Usage = Usage()
    error: tuple[str, str] | None = None  # (type, message)


STREAMS: dict[str, tuple[str, Expected]] = {
    "openai_text": ("openai_chat", Expected(
        text="Hello! How can I help you today?", stop="end_turn",
        usage=Usage(input_tokens=2006, output_tokens=9, cached_tokens=1920))),
    "openai_tools_parallel": ("openai_chat", Expected(
        tools=(("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather",
                '{"location": "Zürich, CH", "unit": "c"}'),
               ("call_7b3qcHw2kgxUVwLJ0BnrCJ9s", "get_time", '{"tz": "Europe/Zurich"}')),
        stop="tool_use", usage=Usage(input_tokens=182, output_tokens=51))),
    "openai_reasoning": ("openai_chat", Expected(
        thinking="The user asks for 17*3. 17*3 = 51.", text="17 × 3 = **51**", stop="end_turn",
        usage=Usage(input_tokens=80, output_tokens=35, cached_tokens=64, reasoning_tokens=21))),
    "openai_error": ("openai_chat", Expected(
        text="Once upon a time",
        error=("server_error",
               "The server had an error while processing your request. Sorry about that!"))),
    "anthropic_text": ("anthropic_messages", Expected(
        text="Hello! How can I help you today?", stop="end_turn",
        usage=Usage(input_tokens=2173, output_tokens=12, cached_tokens=2048,
                    cache_creation_tokens=100))),
    "anthropic_tools_parallel": ("anthropic_messages", Expected(
        text="I'll check both for you.",
        tools=(("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather",
                '{"location": "San Francisco, CA", "unit": "fahrenheit"}'),
               ("toolu_01AbCdEfGhIjKlMnOpQrStUv", "get_time", '{"tz": "America/Los_Angeles"}')),
        stop="tool_use", usage=Usage(input_tokens=472, output_tokens=89))),
    "anthropic_thinking": ("anthropic_messages", Expected(
        thinking="I need to find the GCD of 1071 and 462."
                 "\n1071 = 2·462 + 147; 462 = 3·147 + 21; 147 = 7·21.",
        signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+Z7BoBmP+VnCFOqQIa8o9x0F"
                  "qO6Jg==",
        text="The greatest common divisor of 1071 and 462 is **21**.", stop="end_turn",
        usage=Usage(input_tokens=85, output_tokens=176, reasoning_tokens=148))),
    "anthropic_error": ("anthropic_messages", Expected(
        text="Once upon", error=("overloaded_error", "Overloaded"))),
    "responses_text": ("openai_responses", Expected(
        text="Hello! How can I help you today?", stop="end_turn",
        usage=Usage(input_tokens=1210, output_tokens=11, cached_tokens=1152))),
    "responses_reasoning_tool": ("openai_responses", Expected(
        thinking="**Listing files**\n\nThe user wants the files; I'll run ls.",
        signature="gAAAAABor-enc-opaque==",
        tools=(("call_Xq8wZk3n1Lp0", "exec_command", '{"cmd":"ls -la","workdir":"/tmp/é"}'),),
        stop="tool_use",
        usage=Usage(input_tokens=4096, output_tokens=87, cached_tokens=3968,
                    reasoning_tokens=64))),
    "responses_failed": ("openai_responses", Expected(
        text="Once upon",
        error=("server_error", "An error occurred while processing your request."))),
}
UPSTREAM = {"openai_chat": openai_chat, "anthropic_messages": anthropic_messages,
            "openai_responses": openai_responses}
SURFACE = {"openai_chat": openai_chat, "anthropic_messages": anthropic_messages,
           "openai_responses": openai_responses}


def parse_sse(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """The (event, data) pairs of an SSE transcript, up to OpenAI's "[DONE]"."""
    events = []
    for frame in text.split("\n\n"):
        name, data = None, []
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if not data:
            continue
        if data == ["[DONE]"]:
            break
        events.append((name, json.loads("\n".join(data))))
    return events


def sse_bytes(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, payload in events:
        frame = f"event: {name}\n" if name else ""
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        out.append(f"{frame}data: {data}\n\n")
    return "".join(out).encode()


def decode(stream: str) -> list[StreamEvent]:
    decoder = UPSTREAM[STREAMS[stream][0]].StreamDecoder()
    events: list[StreamEvent] = []
    for name, data in parse_sse((GOLDEN / f"{stream}.sse").read_text()):
        events.extend(decoder.feed(name, data))
    return events + decoder.finish()


def encode(surface: str, events: list[StreamEvent]) -> list[tuple[str | None, Any]]:
    kwargs: dict[str, Any] = {"model": MODEL, "request_id": REQUEST_ID}
    if surface != "anthropic_messages":
        kwargs["created"] = CREATED
    encoder = SURFACE[surface].StreamEncoder(**kwargs)
    out: list[tuple[str | None, Any]] = []
    for ev in events:
        out.extend(encoder.feed(ev))
    return out + encoder.finish()


def ir_json(events: list[StreamEvent]) -> list[dict[str, Any]]:
    return [{"event": type(ev).__name__, **dataclasses.asdict(ev)} for ev in events]


def transcript(stream: str) -> dict[str, Any]:
    events = decode(stream)
    return {"ir": ir_json(events),
            **{s: [list(e) for e in encode(s, events)] for s in SURFACES}}


def expected_transcript(stream: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{stream}.expected.json").read_text())


@pytest.mark.parametrize("part", ("ir", *SURFACES))
@pytest.mark.parametrize("stream", STREAMS)
def test_translation_matches_golden_transcript_event_by_event(stream: str, part: str) -> None:
    actual = transcript(stream)[part]
    expected = expected_transcript(stream)[part]
    for i, (got, want) in enumerate(zip(actual, expected)):
        assert got == want, f"{stream} -> {part}: event {i} differs"
    assert len(actual) == len(expected), f"{stream} -> {part}: event count differs"


@pytest.mark.parametrize("stream", STREAMS)
def test_ir_reassembles_exactly_what_the_upstream_sent(stream: str) -> None:
    expected = STREAMS[stream][1]
    events = decode(stream)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    signature = "".join(e.signature for e in events if isinstance(e, SignatureDelta)) or None
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    tools = tuple((s.id, s.name, "".join(e.partial_json for e in events
                                         if isinstance(e, ToolArgsDelta) and e.index == s.index))
                  for s in starts)
    stops = [e.reason for e in events if isinstance(e, Stop)]
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    errors = [(e.type, e.message) for e in events if isinstance(e, StreamError)]
    assert (text, thinking, signature, tools) == (expected.text, expected.thinking,
                                                  expected.signature, expected.tools)
    assert stops == ([expected.stop] if expected.stop else [])
    assert errors == ([expected.error] if expected.error else [])
    if not expected.error:
        assert usages[-1] == expected.usage


def _transport(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})
    return httpx2.Client(transport=httpx2.MockTransport(handler))


def _surface_bytes(stream: str, surface: str) -> bytes:
    return sse_bytes(encode(surface, decode(stream)))


@pytest.mark.parametrize("stream", STREAMS)
def test_anthropic_sdk_parses_translated_stream(stream: str) -> None:
    expected = STREAMS[stream][1]
    client = anthropic.Anthropic(api_key="k", base_url="http://gateway.test",
                                 http_client=_transport(_surface_bytes(stream,
                                                                       "anthropic_messages")))
    request = {"model": MODEL, "max_tokens": 1024,
               "messages": [{"role": "user", "content": "hi"}]}
    with client.messages.stream(**request) as s:
        if expected.error:
            with pytest.raises(anthropic.APIStatusError, match=expected.error[1]):
                s.until_done()
            assert "".join(b.text for b in s.current_message_snapshot.content
                           if b.type == "text") == expected.text
            return
        message = s.get_final_message()
    message = anthropic.types.Message.model_validate(message.to_dict())
    assert "".join(b.text for b in message.content if b.type == "text") == expected.text
    assert "".join(b.thinking for b in message.content if b.type == "thinking") \
        == expected.thinking
    if expected.signature:
        assert [b.signature for b in message.content if b.type == "thinking"] \
            == [expected.signature]
    assert [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] \
        == [(i, n, json.loads(a)) for i, n, a in expected.tools]
    assert message.stop_reason == expected.stop
    u = message.usage
    assert (u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens,
            u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) \
        == (expected.usage.input_tokens, expected.usage.output_tokens,
            expected.usage.cached_tokens, expected.usage.cache_creation_tokens)


@pytest.mark.parametrize("stream", STREAMS)
def test_openai_sdk_parses_translated_chat_stream(stream: str) -> None:
    expected = STREAMS[stream][1]
    client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                           http_client=_transport(_surface_bytes(stream, "openai_chat")))
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with client.chat.completions.stream(**request) as s:
        if expected.error:
            with pytest.raises(openai.APIError, match=expected.error[1]):
                s.until_done()
            return
        completion = s.get_final_completion()
    completion = openai.types.chat.ChatCompletion.model_validate(completion.to_dict())
    message = completion.choices[0].message
    assert (message.content or "") == expected.text
    assert (getattr(message, "reasoning_content", None) or "") == expected.thinking
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] \
        == list(expected.tools)
    assert completion.choices[0].finish_reason == {"end_turn": "stop", "tool_use": "tool_calls"
                                                   }[expected.stop or ""]
    u = completion.usage
    assert u is not None
    assert (u.prompt_tokens, u.completion_tokens, u.prompt_tokens_details.cached_tokens,
            u.completion_tokens_details.reasoning_tokens) \
        == (expected.usage.input_tokens, expected.usage.output_tokens,
            expected.usage.cached_tokens, expected.usage.reasoning_tokens)


@pytest.mark.parametrize("stream", STREAMS)
def test_openai_sdk_parses_translated_responses_stream(stream: str) -> None:
    expected = STREAMS[stream][1]
    client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                           http_client=_transport(_surface_bytes(stream, "openai_responses")))
    with client.responses.stream(model=MODEL, input="hi") as s:
        events = list(s)
        if expected.error:
            assert [e.type for e in events[-2:]] == ["error", "response.failed"]
            assert events[-1].response.error.message == expected.error[1]
            assert events[-1].response.output_text == expected.text
            return
        response = s.get_final_response()
    response = openai.types.responses.Response.model_validate(response.to_dict())
    assert response.status == "completed"
    assert response.output_text == expected.text
    reasoning = [i for i in response.output if i.type == "reasoning"]
    assert "".join(s.text for i in reasoning for s in i.summary) == expected.thinking
    assert [i.encrypted_content for i in reasoning if i.encrypted_content] \
        == ([expected.signature] if expected.signature else [])
    assert [(i.call_id, i.name, i.arguments) for i in response.output
            if i.type == "function_call"] == list(expected.tools)
    u = response.usage
    assert u is not None
    assert (u.input_tokens, u.output_tokens, u.input_tokens_details.cached_tokens,
            u.output_tokens_details.reasoning_tokens, u.total_tokens) \
        == (expected.usage.input_tokens, expected.usage.output_tokens,
            expected.usage.cached_tokens, expected.usage.reasoning_tokens,
            expected.usage.total_tokens)


def _dump(parts: dict[str, Any]) -> str:
    """A transcript as JSON with one event per line, so that a diff shows which events moved."""
    blocks = []
    for part, events in parts.items():
        lines = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in events)
        blocks.append(f' "{part}": [\n{lines}\n ]')
    return "{\n" + ",\n".join(blocks) + "\n}\n"


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    for name in STREAMS:
        (GOLDEN / f"{name}.expected.json").write_text(_dump(transcript(name)))
