"""Golden transcripts for Bedrock Converse (gateway/tests/golden/bedrock/), shaped on the
examples of the Converse / ConverseStream API reference and its tool-use, reasoning and
guardrail guides: each stream is framed as AWS event-stream messages, read back with
botocore's EventStreamBuffer by the transport (gateway.adapters.bedrock), decoded into the IR
by the codec, and encoded for every client surface, whose official SDK parses it into the
same content. Requests built from Chat Completions and Messages bodies are checked against
the body Converse documents."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest
from botocore.eventstream import EventStreamBuffer

from gateway.adapters.bedrock import _event
from gateway.codecs import anthropic_messages, bedrock_converse, openai_chat
from gateway.tests.fake_clouds import aws_event, aws_exception
from gateway.tests.test_codecs_golden import MODEL, _transport, encode, sse_bytes
from gateway.types import (CodecOptions, RedactedThinkingPart, SignatureDelta, Stop,
                           StreamError, TextDelta, TextPart, ThinkingDelta, ThinkingPart,
                           ToolArgsDelta, ToolCallPart, ToolCallStart, Usage, UsageUpdate)

GOLDEN = Path(__file__).parent / "golden" / "bedrock"


@dataclass(frozen=True)
class Expected:
    text: str = ""
    thinking: str = ""
    signature: str | None = None
    tools: tuple[tuple[str, str, str], ...] = ()
    stop: str | None = None
    usage: Usage = Usage()
    error: str | None = None


STREAMS = {
    "converse_text": Expected(text="Hello there!", stop="end_turn", usage=Usage(
        input_tokens=2058, output_tokens=5, cached_tokens=2048)),
    "converse_tool_use": Expected(
        text="I'll look up the most popular song on WZPZ.",
        tools=(("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "top_song", '{"sign": "WZPZ"}'),),
        stop="tool_use", usage=Usage(input_tokens=375, output_tokens=63)),
    "converse_reasoning": Expected(
        thinking="The user wants 17 times 3. 17 * 3 = 51.", text="17 × 3 = **51**",
        signature=json.loads((GOLDEN / "converse_reasoning.json").read_text())[3][1]["delta"][
            "reasoningContent"]["signature"],
        stop="end_turn", usage=Usage(input_tokens=1244, output_tokens=58,
                                     cache_creation_tokens=1200)),
    "converse_guardrail": Expected(text="Sorry, the model cannot answer this question.",
                                   stop="refusal", usage=Usage(input_tokens=21, output_tokens=11)),
    "converse_exception": Expected(text="Once upon",
                                   error="modelStreamErrorException: The model stream was "
                                         "interrupted."),
}


def frames(stream: str) -> bytes:
    out = b""
    for item in json.loads((GOLDEN / f"{stream}.json").read_text()):
        out += aws_exception(item[1], item[2]) if item[0] == "!exception" \
            else aws_event(item[0], item[1])
    return out


def decode(stream: str):
    """The IR of a golden stream, read as the transport reads it: bytes in small pieces."""
    buffer, decoder, events = EventStreamBuffer(), bedrock_converse.StreamDecoder(), []
    data = frames(stream)
    for start in range(0, len(data), 13):
        buffer.add_data(data[start:start + 13])
        for message in buffer:
            name, payload = _event(message, anthropic=False)
            events.extend(decoder.feed(name, json.loads(payload)))
    return events + decoder.finish()


@pytest.mark.parametrize("stream", STREAMS)
def test_the_ir_reassembles_exactly_what_converse_streamed(stream):
    expected = STREAMS[stream]
    events = decode(stream)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected.text
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == expected.thinking
    assert ("".join(e.signature for e in events if isinstance(e, SignatureDelta)) or None) \
        == expected.signature
    assert tuple((s.id, s.name, "".join(e.partial_json for e in events if isinstance(
        e, ToolArgsDelta) and e.index == s.index)) for s in starts) == expected.tools
    assert [e.reason for e in events if isinstance(e, Stop)] == \
        ([expected.stop] if expected.stop else [])
    assert [e.message for e in events if isinstance(e, StreamError)] == \
        ([expected.error] if expected.error else [])
    if not expected.error:
        assert [e.usage for e in events if isinstance(e, UsageUpdate)][-1] == expected.usage


def _bytes(stream: str, surface: str) -> bytes:
    return sse_bytes(encode(surface, decode(stream)))


@pytest.mark.parametrize("stream", STREAMS)
def test_the_anthropic_sdk_reads_a_translated_converse_stream(stream):
    expected = STREAMS[stream]
    client = anthropic.Anthropic(api_key="k", base_url="http://gateway.test",
                                 http_client=_transport(_bytes(stream, "anthropic_messages")))
    with client.messages.stream(model=MODEL, max_tokens=100,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        if expected.error:
            with pytest.raises(anthropic.APIStatusError, match="modelStreamErrorException"):
                s.until_done()
            return
        message = s.get_final_message()
    assert "".join(b.text for b in message.content if b.type == "text") == expected.text
    assert "".join(b.thinking for b in message.content if b.type == "thinking") \
        == expected.thinking
    assert [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] \
        == [(i, n, json.loads(a)) for i, n, a in expected.tools]
    assert message.stop_reason == expected.stop
    u = message.usage
    assert (u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens,
            u.cache_read_input_tokens, u.output_tokens) == (
        expected.usage.input_tokens, expected.usage.cached_tokens, expected.usage.output_tokens)


@pytest.mark.parametrize("stream", STREAMS)
def test_the_openai_sdk_reads_a_translated_converse_stream(stream):
    expected = STREAMS[stream]
    client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                           http_client=_transport(_bytes(stream, "openai_chat")))
    with client.chat.completions.stream(model=MODEL,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
        if expected.error:
            with pytest.raises(openai.APIError, match="modelStreamErrorException"):
                s.until_done()
            return
        if expected.stop == "refusal":
            # The SDK's own reading of a guardrail's stop: finish_reason content_filter.
            with pytest.raises(openai.ContentFilterFinishReasonError):
                s.get_final_completion()
            return
        completion = s.get_final_completion()
    message = completion.choices[0].message
    assert (message.content or "") == expected.text
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] \
        == list(expected.tools)
    assert completion.choices[0].finish_reason == {
        "end_turn": "stop", "tool_use": "tool_calls"}[expected.stop]
    assert completion.usage.prompt_tokens == expected.usage.input_tokens
    responses = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                              http_client=_transport(_bytes(stream, "openai_responses")))
    with responses.responses.stream(model=MODEL, input="hi") as s:
        response = s.get_final_response()
    assert response.output_text == expected.text


def test_a_converse_answer_is_read_into_the_ir():
    body = json.loads((GOLDEN / "converse_response.json").read_text())
    resp = bedrock_converse.parse_response(body)
    assert resp.content == (
        ThinkingPart("A radio station sign. Use the tool.", "ErcBCkgIAhABGAIiQMx"),
        RedactedThinkingPart("RXF1SUJDa2dJQVJBQkdBSWlRTA=="),
        TextPart("Let me check that."),
        ToolCallPart("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "top_song", '{"sign":"WZPZ"}'))
    assert resp.stop_reason == "tool_use"
    assert resp.usage == Usage(input_tokens=2423, output_tokens=63, cached_tokens=1024,
                               cache_creation_tokens=1024)
    assert bedrock_converse.usage_from(body["usage"]) == resp.usage
    assert not bedrock_converse.error_in_body(body)
    assert bedrock_converse.error_in_body({"message": "Malformed input request"})
    assert bedrock_converse.stop_reason("content_filtered") == "refusal"


IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
         "rkJggg==")


def test_a_chat_completions_tool_loop_becomes_the_converse_body_the_reference_documents():
    req = openai_chat.parse_request({
        "model": "m", "max_tokens": 512, "temperature": 0.5, "top_p": 0.9, "stop": ["END"],
        "messages": [
            {"role": "system", "content": "You are a radio DJ."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the most popular song on WZPZ?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                 "function": {"name": "top_song", "arguments": '{"sign": "WZPZ"}'}}]},
            {"role": "tool", "tool_call_id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
             "content": '{"song": "Elemental Hotel", "artist": "8 Storey Hike"}'}],
        "tools": [{"type": "function", "function": {
            "name": "top_song", "description": "Get the most popular song played on a radio "
                                               "station.",
            "parameters": {"type": "object", "properties": {"sign": {"type": "string"}},
                           "required": ["sign"]}}}],
        "tool_choice": "required", "response_format": {"type": "json_object"},
    })
    dropped: list[str] = []
    body = bedrock_converse.build_request(req, upstream_model="m", stream=True,
                                          options=CodecOptions(), dropped=dropped)
    assert body == {
        "messages": [
            {"role": "user", "content": [
                {"text": "What is the most popular song on WZPZ?"},
                {"image": {"format": "png", "source": {"bytes": IMAGE}}}]},
            {"role": "assistant", "content": [{"toolUse": {
                "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song",
                "input": {"sign": "WZPZ"}}}]},
            {"role": "user", "content": [{"toolResult": {
                "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": [
                    {"text": '{"song": "Elemental Hotel", "artist": "8 Storey Hike"}'}]}}]}],
        "system": [{"text": "You are a radio DJ."}],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0.5, "topP": 0.9,
                            "stopSequences": ["END"]},
        "toolConfig": {"tools": [{"toolSpec": {
            "name": "top_song", "inputSchema": {"json": {
                "type": "object", "properties": {"sign": {"type": "string"}},
                "required": ["sign"]}},
            "description": "Get the most popular song played on a radio station."}}],
            "toolChoice": {"any": {}}},
    }
    assert dropped == ["image_url", "response_format"]


def test_a_messages_body_keeps_its_cache_points_and_signed_thinking():
    req = anthropic_messages.parse_request({
        "model": "m", "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "system": [{"type": "text", "text": "Long manual…",
                    "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "top_song", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Top song on WZPZ?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "sig=="},
                {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="},
                {"type": "tool_use", "id": "toolu_1", "name": "top_song",
                 "input": {"sign": "WZPZ"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                 "content": "station unknown", "cache_control": {"type": "ephemeral"}}]}]})
    body = bedrock_converse.build_request(req, upstream_model="m", stream=False,
                                          options=CodecOptions(reasoning=True))
    assert body["system"] == [{"text": "Long manual…"}, {"cachePoint": {"type": "default"}}]
    assert body["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "top_song", "inputSchema": {"json": {"type": "object"}}}},
        {"cachePoint": {"type": "default"}}]
    assert body["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Use the tool.", "signature": "sig=="}}},
        {"reasoningContent": {"redactedContent": "cmVkYWN0ZWQ="}},
        {"toolUse": {"toolUseId": "toolu_1", "name": "top_song", "input": {"sign": "WZPZ"}}}]
    assert body["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "station unknown"}],
                        "status": "error"}},
        {"cachePoint": {"type": "default"}}]
    assert body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 2048}}
    # A route not known to reason gets no thinking, and says so.
    dropped: list[str] = []
    body = bedrock_converse.build_request(req, upstream_model="m", stream=False,
                                          options=CodecOptions(), dropped=dropped)
    assert "additionalModelRequestFields" not in body and dropped == ["thinking"]
