"""The Anthropic Messages codec: client requests in, upstream requests out, message bodies and
streams both ways. Requests come from the official `anthropic` SDK (captured through an
in-memory transport); built upstream bodies are checked against the SDK's own param types."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable

import anthropic
import httpx2
import pytest
from pydantic import TypeAdapter

from gateway.codecs import anthropic_messages, openai_chat, openai_responses
from gateway.errors import InvalidRequest, UpstreamFailed
from gateway.types import (BlockStop, ChatRequest, CodecOptions, DocumentPart, ImagePart,
                           Message, MessageStart, Reasoning, RedactedThinkingPart, Stop,
                           TextDelta, TextPart, ThinkingPart, Tool, ToolArgsDelta, ToolCallPart,
                           ToolCallStart, ToolChoice, ToolResultPart, Usage, UsageUpdate)

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5"
       "ErkJggg==")
OPTIONS = CodecOptions()
_PARAMS = {stream: TypeAdapter(params) for stream, params in (
    (False, anthropic.types.message_create_params.MessageCreateParamsNonStreaming),
    (True, anthropic.types.message_create_params.MessageCreateParamsStreaming))}


def sdk_valid(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as the anthropic SDK's own param types read it; equal to `body` when every key
    and value is one the API defines (unknown keys would be dropped)."""
    def consume(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: consume(v) for k, v in value.items()}
        if isinstance(value, (list, Iterator)):
            return [consume(v) for v in value]
        return value
    return consume(_PARAMS[bool(body.get("stream"))].validate_python(body))


def sent_by_sdk(call: Callable[[anthropic.Anthropic], Any]) -> dict[str, Any]:
    """The JSON body the anthropic SDK sends for `call`."""
    captured: dict[str, Any] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = json.loads(request.content)
        return httpx2.Response(200, json={
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}})
    client = anthropic.Anthropic(api_key="k", base_url="http://gateway.test",
                                 http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    call(client)
    return captured["body"]


def test_parse_request_reads_a_full_conversation_from_the_sdk() -> None:
    body = sent_by_sdk(lambda c: c.messages.create(
        model="claude-sonnet", max_tokens=4000,
        system=[{"type": "text", "text": "You are terse.",
                 "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need weather.", "signature": "sig=="},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Zürich"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                 "content": [{"type": "text", "text": "timeout"}]}]},
        ],
        tools=[{"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 2048},
        stop_sequences=["END"], metadata={"user_id": "u-42"},
        # Sampling parameters are gone from this SDK's signature; older clients still send them.
        extra_body={"temperature": 1, "top_p": 0.9, "top_k": 5}))
    req = anthropic_messages.parse_request(body)
    assert req.surface == "anthropic_messages" and req.model == "claude-sonnet"
    assert req.system == (TextPart("You are terse.", {"type": "ephemeral"}),)
    assert req.messages == (
        Message("user", (TextPart("What is in this image, and the weather?"),
                         ImagePart(data=PNG, media_type="image/png"))),
        Message("assistant", (ThinkingPart("Need weather.", "sig=="), TextPart("Checking."),
                              ToolCallPart("toolu_1", "get_weather", '{"city":"Zürich"}'))),
        Message("user", (ToolResultPart("toolu_1", (TextPart("timeout"),), is_error=True),)),
    )
    assert req.tools == (Tool("get_weather", "Weather for a city",
                              {"type": "object", "properties": {"city": {"type": "string"}}}),)
    assert (req.tool_choice, req.parallel_tool_calls) == (ToolChoice("tool", "get_weather"),
                                                          False)
    assert req.reasoning == Reasoning(budget_tokens=2048)
    assert (req.max_tokens, req.stop, req.temperature, req.top_p, req.user) \
        == (4000, ("END",), 1, 0.9, "u-42")
    assert req.extra == {"top_k": 5}


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("body, param", [
    (_body(model=None), "model"),
    (_body(max_tokens=None), "max_tokens"),
    (_body(max_tokens="10"), "max_tokens"),
    (_body(messages="hi"), "messages"),
    (_body(messages=[]), "messages"),
    (_body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    (_body(messages=[{"role": "user", "content": [{"text": "no type"}]}]),
     "messages[0].content[0].type"),
    (_body(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]),
     "messages[0].content[0].source.data"),
    (_body(system=[{"type": "image"}]), "system[0].type"),
    (_body(temperature=1.5), "temperature"),
    (_body(temperature=True), "temperature"),
    (_body(stop_sequences=[1]), "stop_sequences[0]"),
    (_body(tool_choice={"type": "tool"}), "tool_choice.name"),
    (_body(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (_body(tools=[{"input_schema": {}}]), "tools[0].name"),
    (_body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (_body(thinking={"type": "on"}), "thinking.type"),
    (_body(stream="yes"), "stream"),
])
def test_parse_request_rejects_bad_input_naming_the_field(body: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        anthropic_messages.parse_request(body)
    assert raised.value.param == param


def test_count_tokens_body_needs_no_max_tokens() -> None:
    req = anthropic_messages.parse_request(_body(max_tokens=None), require_max_tokens=False)
    assert req.max_tokens is None


def test_build_request_from_an_openai_client_follows_anthropic_rules() -> None:
    req = openai_chat.parse_request({
        "model": "claude", "user": "u-7", "stop": "END", "max_tokens": 20000,
        "reasoning_effort": "high", "tool_choice": "required", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Bern and Basel?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "functions.get_weather:0", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}},
                {"id": "functions.get_weather:1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Basel"}'}}]},
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "12°C"},
            {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": "14°C"},
            {"role": "user", "content": "Thanks, and tomorrow?"},
        ]})
    body = anthropic_messages.build_request(req, upstream_model="claude-up", stream=True,
                                            options=OPTIONS)
    assert sdk_valid(body) == body
    # Cache breakpoints (no cache_control of the client's own): the last tool, the last
    # system block, the last block of each of the last two user turns.
    cache = {"type": "ephemeral"}
    assert body["tools"][-1]["cache_control"] == cache
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Use tools.", "cache_control": cache}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG},
        "cache_control": cache}
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "functions_get_weather_0", "name": "get_weather",
         "input": {"city": "Bern"}},
        {"type": "tool_use", "id": "functions_get_weather_1", "name": "get_weather",
         "input": {"city": "Basel"}}]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "functions_get_weather_0", "content": "12°C"},
        {"type": "tool_result", "tool_use_id": "functions_get_weather_1", "content": "14°C"},
        {"type": "text", "text": "Thanks, and tomorrow?", "cache_control": cache}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["max_tokens"], body["stop_sequences"], body["metadata"], body["stream"]) \
        == (20000, ["END"], {"user_id": "u-7"}, True)
    # The assistant turn called tools without a signed thinking block (an OpenAI client has
    # none to send back), which Anthropic rejects with thinking on, so thinking stays off.
    assert "thinking" not in body


def test_effort_becomes_a_thinking_budget_below_max_tokens() -> None:
    def thinking(effort: str, max_tokens: int | None) -> Any:
        req = ChatRequest(model="m", messages=(Message("user", (TextPart("hi"),)),),
                          surface="openai_chat", max_tokens=max_tokens,
                          reasoning=Reasoning(effort=effort))
        body = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                                options=OPTIONS)
        return body["max_tokens"], body.get("thinking")
    assert thinking("medium", 16000) == (16000, {"type": "enabled", "budget_tokens": 4000})
    assert thinking("high", None) == (4096, {"type": "enabled", "budget_tokens": 4095})
    assert thinking("low", 1000) == (1000, None)
    assert thinking("none", 16000) == (16000, None)


def test_signed_thinking_is_replayed_and_unsigned_thinking_dropped() -> None:
    turns = (Message("user", (TextPart("q"),)),
             Message("assistant", (ThinkingPart("a", "sig"), ToolCallPart("t1", "f", "{}"))),
             Message("user", (ToolResultPart("t1", (TextPart("ok"),)),)),
             Message("assistant", (ThinkingPart("unsigned"), TextPart("done"),
                                   RedactedThinkingPart("opaque"))),
             Message("user", (TextPart("more"),)))
    req = ChatRequest(model="m", messages=turns, surface="openai_responses",
                      reasoning=Reasoning(effort="low"), max_tokens=8000)
    body = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                            options=OPTIONS)
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "a",
                                                 "signature": "sig"}
    assert body["messages"][3]["content"] == [{"type": "text", "text": "done"},
                                              {"type": "redacted_thinking", "data": "opaque"}]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sdk_valid(body) == body


def test_unknown_fields_reach_only_an_upstream_of_the_same_dialect() -> None:
    req = anthropic_messages.parse_request(_body(top_k=3, service_tier="auto"))
    same = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                            options=OPTIONS)
    other = openai_chat.build_request(req, upstream_model="m", stream=False, options=OPTIONS)
    assert (same["top_k"], same["service_tier"]) == (3, "auto")
    assert "top_k" not in other and "service_tier" not in other
    openai_req = openai_chat.parse_request({"model": "m", "seed": 1,
                                            "messages": [{"role": "user", "content": "x"}]})
    assert "seed" not in anthropic_messages.build_request(openai_req, upstream_model="m",
                                                          stream=False, options=OPTIONS)


def test_documents_need_allow_documents_and_images_allow_images() -> None:
    pdf = {"type": "document", "title": "a.pdf",
           "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    req = anthropic_messages.parse_request(_body(messages=[{"role": "user", "content": [pdf]}]))
    assert req.messages[0].content == (DocumentPart(media_type="application/pdf",
                                                    data="JVBERi0=", title="a.pdf"),)
    with pytest.raises(InvalidRequest, match="documents") as raised:
        anthropic_messages.build_request(req, upstream_model="m", stream=False, options=OPTIONS)
    assert raised.value.param == "messages[0].content"
    body = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                            options=CodecOptions(allow_documents=True))
    assert body["messages"][0]["content"] == [pdf]
    image = {"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "https://example.com/cat.png"}}]}
    with pytest.raises(InvalidRequest, match="images"):
        anthropic_messages.build_request(
            anthropic_messages.parse_request(_body(messages=[image])), upstream_model="m",
            stream=False, options=CodecOptions(allow_images=False))


def test_response_body_round_trips_with_cache_usage() -> None:
    upstream = {
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "s1"},
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "ä"}},
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                     "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 1000,
                  "cache_creation_input_tokens": 200, "output_tokens": 50}}
    resp = anthropic_messages.parse_response(upstream)
    assert resp.content == (ThinkingPart("hmm", "s1"), TextPart("Calling."),
                            ToolCallPart("toolu_9", "lookup", '{"q":"ä"}'))
    assert resp.usage == Usage(input_tokens=1210, output_tokens=50, cached_tokens=1000,
                               cache_creation_tokens=200)
    body = anthropic_messages.format_response(resp, model="public", request_id="req_1")
    message = anthropic.types.Message.model_validate(body)
    assert message.id == "msg_req_1" and message.model == "public"
    assert message.stop_reason == "tool_use"
    assert message.content[2].input == {"q": "ä"}
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens) == (10, 1000, 200)
    with pytest.raises(UpstreamFailed):
        anthropic_messages.parse_response({"type": "message"})


def test_stream_decoder_skips_server_tool_blocks_and_merges_usage() -> None:
    decoder = anthropic_messages.StreamDecoder()
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "model": "c", "usage": {"input_tokens": 5,
                                                   "cache_read_input_tokens": 100,
                                                   "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "pause_turn"},
                           "usage": {"output_tokens": 30}}),
    ]
    ir = [ev for name, data in events for ev in decoder.feed(name, data)]
    assert ir == [
        MessageStart("msg_1", "c", Usage(input_tokens=105, output_tokens=1, cached_tokens=100)),
        ToolCallStart(1, "toolu_1", "f"), ToolArgsDelta(1, "{}"), BlockStop(1),
        Stop("pause"),
        UsageUpdate(Usage(input_tokens=105, output_tokens=30, cached_tokens=100))]


def test_stream_encoder_opens_the_message_and_defaults_the_stop_reason() -> None:
    encoder = anthropic_messages.StreamEncoder(model="m", request_id="msg_abc")
    out = encoder.feed(TextDelta(3, "hi")) + encoder.feed(ToolCallStart(7, "t", "f"))
    out += encoder.finish()
    assert [name for name, _ in out] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_stop", "message_delta", "message_stop"]
    assert out[0][1]["message"]["id"] == "msg_abc"  # prefix not doubled
    assert [data.get("index") for _, data in out[1:6]] == [0, 0, 0, 1, 1]
    assert out[6][1]["delta"]["stop_reason"] == "tool_use"
    assert encoder.feed(TextDelta(3, "late")) == [] and encoder.finish() == []


def test_error_types_map_onto_anthropic_names() -> None:
    encoder = anthropic_messages.StreamEncoder(model="m", request_id="r")
    assert encoder.error("slow down", "rate_limit_error") == [
        ("error", {"type": "error", "error": {"type": "rate_limit_error",
                                              "message": "slow down"}})]
    assert anthropic_messages.error_type("server_error") == "api_error"
    assert anthropic_messages.error_type("insufficient_quota") == "billing_error"


def test_responses_reasoning_items_keep_thinking_on_for_anthropic() -> None:
    req = openai_responses.parse_request({
        "model": "m", "reasoning": {"effort": "medium"}, "max_output_tokens": 9000,
        "input": [{"role": "user", "content": "q"},
                  {"type": "reasoning", "id": "rs_1", "encrypted_content": "sig",
                   "summary": [{"type": "summary_text", "text": "think"}]},
                  {"type": "function_call", "call_id": "call_1", "name": "f",
                   "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "call_1", "output": "42"}]})
    body = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                            options=OPTIONS)
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "think", "signature": "sig"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4000}


def test_an_effort_maps_to_no_thinking_when_the_deployment_says_so() -> None:
    req = ChatRequest(model="m", messages=(Message("user", (TextPart("hi"),)),),
                      surface="openai_chat", max_tokens=16000, reasoning=Reasoning(effort="high"))
    body = anthropic_messages.build_request(req, upstream_model="m", stream=False,
                                            options=CodecOptions(effort_to_budget={}))
    assert "thinking" not in body
