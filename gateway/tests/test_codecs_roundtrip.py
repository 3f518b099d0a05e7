"""Translation across dialects, end to end and without a server: an official SDK client talks
to a function that does what the gateway does with the codecs (parse the surface request, build
the upstream one, parse the upstream reply, format it for the surface), and the upstream is a
function that checks what it received and answers in its own dialect."""
from __future__ import annotations

import json
from typing import Any, Callable

import anthropic
import httpx2
import openai
import pytest

from gateway.codecs import anthropic_messages, openai_chat, openai_responses
from gateway.types import CodecOptions, StopReason, Usage

OPTIONS = CodecOptions()
Upstream = Callable[[dict[str, Any]], dict[str, Any]]


def gateway(surface: Any, upstream: Any, reply: Upstream) -> httpx2.Client:
    """An HTTP client whose every request goes through the codecs to `reply` and back."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        req = surface.parse_request(json.loads(request.content))
        body = upstream.build_request(req, upstream_model="upstream-model", stream=False,
                                      options=OPTIONS)
        resp = upstream.parse_response(reply(body))
        return httpx2.Response(200, json=surface.format_response(resp, model=req.model,
                                                                 request_id="req_1"))
    return httpx2.Client(transport=httpx2.MockTransport(handler))


def openai_completion(message: dict[str, Any], finish: str,
                      usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1,
            "model": "upstream-model", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}]}


def test_anthropic_sdk_gets_parallel_tool_calls_from_an_openai_upstream() -> None:
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["messages"][-2:] == [
            {"role": "tool", "tool_call_id": "toolu_0", "content": "Error: no such city"},
            {"role": "user", "content": "Try Paris and Rome."}]
        assert (body["tool_choice"], body["stop"], body["max_tokens"]) == ("auto", ["###"], 300)
        return openai_completion(
            {"content": None, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]},
            "tool_calls", {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                           "prompt_tokens_details": {"cached_tokens": 100}})

    client = anthropic.Anthropic(api_key="k", base_url="http://gw.test",
                                 http_client=gateway(anthropic_messages, openai_chat, upstream))
    message = client.messages.create(
        model="claude-public", max_tokens=300, system="Be brief.", stop_sequences=["###"],
        tools=[{"name": "weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "Weather in Atlantis?"},
                  {"role": "assistant", "content": [
                      {"type": "tool_use", "id": "toolu_0", "name": "weather",
                       "input": {"city": "Atlantis"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "toolu_0", "is_error": True,
                       "content": "no such city"},
                      {"type": "text", "text": "Try Paris and Rome."}]}])
    assert message.stop_reason == "tool_use" and message.model == "claude-public"
    assert [(b.id, b.input) for b in message.content] == [("call_a", {"city": "Paris"}),
                                                          ("call_b", {"city": "Rome"})]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (20, 100, 30)


def test_openai_sdk_gets_thinking_and_text_from_an_anthropic_upstream() -> None:
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        assert body["system"] == [{"type": "text", "text": "Be exact.",
                                   "cache_control": {"type": "ephemeral"}}]
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 4000}
        assert body["messages"] == [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/c.png"},
             "cache_control": {"type": "ephemeral"}}]}]
        return {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "thinking", "thinking": "A cat.", "signature": "s"},
                            {"type": "text", "text": "A cat on a mat."}],
                "stop_reason": "max_tokens", "stop_sequence": None,
                "usage": {"input_tokens": 40, "cache_read_input_tokens": 0,
                          "cache_creation_input_tokens": 60, "output_tokens": 8000}}

    client = openai.OpenAI(api_key="k", base_url="http://gw.test/v1",
                           http_client=gateway(openai_chat, anthropic_messages, upstream))
    completion = client.chat.completions.create(
        model="gpt-public", max_completion_tokens=8000, reasoning_effort="medium",
        messages=[{"role": "system", "content": "Be exact."},
                  {"role": "user", "content": [
                      {"type": "text", "text": "Describe"},
                      {"type": "image_url", "image_url": {"url": "https://x.test/c.png"}}]}])
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("A cat on a mat.", "length")
    assert choice.message.reasoning_content == "A cat."  # type: ignore[attr-defined]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (100, 8000)


def test_responses_sdk_reaches_an_openai_chat_upstream() -> None:
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Bern"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12°C"}]
        assert body["tools"][0]["function"]["name"] == "weather"
        assert body["reasoning_effort"] == "low"
        return openai_completion({"content": "It is 12°C."}, "stop",
                                 {"prompt_tokens": 50, "completion_tokens": 6,
                                  "total_tokens": 56})

    client = openai.OpenAI(api_key="k", base_url="http://gw.test/v1",
                           http_client=gateway(openai_responses, openai_chat, upstream))
    response = client.responses.create(
        model="gpt-public", instructions="Be brief.", reasoning={"effort": "low"},
        tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"},
                "strict": False}],
        input=[{"role": "user", "content": "Weather?"},
               {"type": "function_call", "call_id": "call_1", "name": "weather",
                "arguments": '{"city":"Bern"}'},
               {"type": "function_call_output", "call_id": "call_1", "output": "12°C"}])
    assert (response.output_text, response.status, response.usage.total_tokens) \
        == ("It is 12°C.", "completed", 56)


@pytest.mark.parametrize("anthropic_reason, ir, finish", [
    ("end_turn", "end_turn", "stop"),
    ("max_tokens", "max_tokens", "length"),
    ("tool_use", "tool_use", "tool_calls"),
    ("refusal", "refusal", "content_filter"),
])
def test_stop_reasons_map_exactly_both_ways(anthropic_reason: str, ir: StopReason,
                                            finish: str) -> None:
    from_anthropic = anthropic_messages.parse_response({
        "id": "m", "content": [], "stop_reason": anthropic_reason, "usage": {}})
    from_openai = openai_chat.parse_response(openai_completion({"content": "x"}, finish, {}))
    assert from_anthropic.stop_reason == from_openai.stop_reason == ir
    assert openai_chat.format_response(from_anthropic, model="m", request_id="r") \
        ["choices"][0]["finish_reason"] == finish
    assert anthropic_messages.format_response(from_openai, model="m", request_id="r") \
        ["stop_reason"] == anthropic_reason


@pytest.mark.parametrize("anthropic_reason, finish", [
    ("stop_sequence", "stop"), ("pause_turn", "stop"), ("model_context_window_exceeded",
                                                        "length")])
def test_anthropic_only_stop_reasons_fall_back_to_the_nearest_openai_one(
        anthropic_reason: str, finish: str) -> None:
    resp = anthropic_messages.parse_response({"id": "m", "content": [],
                                              "stop_reason": anthropic_reason, "usage": {}})
    assert openai_chat.format_response(resp, model="m", request_id="r") \
        ["choices"][0]["finish_reason"] == finish


def test_usage_with_cache_reads_and_writes_survives_both_dialects() -> None:
    anthropic_usage = {"input_tokens": 7, "cache_read_input_tokens": 900,
                       "cache_creation_input_tokens": 100, "output_tokens": 42}
    resp = anthropic_messages.parse_response({"id": "m", "content": [],
                                              "stop_reason": "end_turn",
                                              "usage": anthropic_usage})
    assert resp.usage == Usage(input_tokens=1007, output_tokens=42, cached_tokens=900,
                               cache_creation_tokens=100)
    as_openai = openai_chat.format_response(resp, model="m", request_id="r")
    back = openai_chat.parse_response(as_openai)
    assert back.usage == resp.usage
    assert anthropic_messages.format_response(back, model="m", request_id="r")["usage"] \
        == anthropic_usage


def test_a_conversation_survives_openai_to_anthropic_to_openai() -> None:
    original = {
        "model": "m", "max_tokens": 100, "temperature": 0.7, "top_p": 0.8, "stop": ["X", "Y"],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                    "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": '{"k":"ü"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "R1"},
            {"role": "user", "content": "U2"}]}
    anthropic_body = anthropic_messages.build_request(
        openai_chat.parse_request(original), upstream_model="m", stream=False, options=OPTIONS)
    back = openai_chat.build_request(anthropic_messages.parse_request(anthropic_body),
                                     upstream_model="m", stream=False, options=OPTIONS)
    assert back == original
