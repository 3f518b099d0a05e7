"""The OpenAI Chat Completions codec: client requests in, upstream requests out, completion
bodies and chunk streams both ways. Requests come from the official `openai` SDK (captured
through an in-memory transport); built upstream bodies are checked against the SDK's own param
types."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable

import httpx2
import openai
import pytest
from pydantic import TypeAdapter

from gateway.codecs import anthropic_messages, openai_chat
from gateway.errors import InvalidRequest, UpstreamFailed
from gateway.types import (BlockStop, CodecOptions, ImagePart, Message, MessageStart, Reasoning,
                           ResponseFormat, Stop, StreamEvent, TextDelta, TextPart, ThinkingDelta,
                           ThinkingPart, Tool, ToolArgsDelta, ToolCallPart, ToolCallStart,
                           ToolChoice, ToolResultPart, Usage, UsageUpdate)

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5"
       "ErkJggg==")
OPTIONS = CodecOptions()
_PARAMS = {stream: TypeAdapter(params) for stream, params in (
    (False, openai.types.chat.completion_create_params.CompletionCreateParamsNonStreaming),
    (True, openai.types.chat.completion_create_params.CompletionCreateParamsStreaming))}


def sdk_valid(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as the openai SDK's own param types read it; equal to `body` when every key and
    value is one the API defines (unknown keys would be dropped)."""
    def consume(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: consume(v) for k, v in value.items()}
        if isinstance(value, (list, Iterator)):
            return [consume(v) for v in value]
        return value
    return consume(_PARAMS[bool(body.get("stream"))].validate_python(body))


def sent_by_sdk(call: Callable[[openai.OpenAI], Any]) -> dict[str, Any]:
    """The JSON body the openai SDK sends for `call`."""
    captured: dict[str, Any] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = json.loads(request.content)
        return httpx2.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}]})
    client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    call(client)
    return captured["body"]


def test_parse_request_reads_a_full_conversation_from_the_sdk() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    body = sent_by_sdk(lambda c: c.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here and there?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg",
                                                    "detail": "low"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12°C"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "3°C"}]},
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "So?"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "strict": True,
                                                 "description": "Weather", "parameters": schema}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, max_completion_tokens=500, stop="END", temperature=0.2,
        top_p=0.5, stream=True, stream_options={"include_usage": True}, reasoning_effort="low",
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema,
                                                                "strict": True}},
        user="u-1", metadata={"team": "x"}, seed=7))
    req = openai_chat.parse_request(body)
    assert req.surface == "openai_chat"
    assert req.system == (TextPart("Be brief."), TextPart("Use metric units."))
    assert req.messages == (
        Message("user", (TextPart("Weather here and there?"),
                         ImagePart(url="https://example.com/a.jpg", detail="low"),
                         ImagePart(data=PNG, media_type="image/png"))),
        Message("assistant", (ToolCallPart("call_1", "get_weather", '{"city": "Bern"}'),
                              ToolCallPart("call_2", "get_weather", '{"city": "Oslo"}'))),
        Message("user", (ToolResultPart("call_1", (TextPart("12°C"),)),
                         ToolResultPart("call_2", (TextPart("3°C"),)))),
        Message("system", (TextPart("Answer in one line."),)),
        Message("user", (TextPart("So?"),)),
    )
    assert req.tools == (Tool("get_weather", "Weather", schema, strict=True),)
    assert (req.tool_choice, req.parallel_tool_calls) == (ToolChoice("tool", "get_weather"),
                                                          False)
    assert (req.max_tokens, req.stop, req.temperature, req.top_p) == (500, ("END",), 0.2, 0.5)
    assert (req.stream, req.include_usage, req.reasoning) == (True, True,
                                                              Reasoning(effort="low"))
    assert req.response_format == ResponseFormat("json_schema", name="w", schema=schema,
                                                 strict=True)
    assert (req.user, req.metadata, req.extra) == ("u-1", {"team": "x"}, {"seed": 7})


def test_assistant_reasoning_content_is_read_as_thinking() -> None:
    req = openai_chat.parse_request({"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "reasoning_content": "because", "content": "a"}]})
    assert req.messages[1].content == (ThinkingPart("because"), TextPart("a"))


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("body, param", [
    (_body(model=None), "model"),
    (_body(model=5), "model"),
    (_body(messages=None), "messages"),
    (_body(messages=[]), "messages"),
    (_body(messages=["hi"]), "messages[0]"),
    (_body(messages=[{"content": "hi"}]), "messages[0].role"),
    (_body(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    (_body(messages=[{"role": "user"}]), "messages[0].content"),
    (_body(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
     "messages[0].content[0].type"),
    (_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]),
     "messages[0].content[0].image_url.url"),
    (_body(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]),
     "messages[1].tool_call_id"),
    (_body(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]),
     "messages[0].tool_calls[0].function.name"),
    (_body(messages=[{"role": "function", "name": "f", "content": "x"}]), "messages[0].role"),
    (_body(n=2), "n"),
    (_body(temperature=3), "temperature"),
    (_body(top_p="0.5"), "top_p"),
    (_body(max_tokens=0), "max_tokens"),
    (_body(max_completion_tokens=1.5), "max_completion_tokens"),
    (_body(stop=["a", 1]), "stop[1]"),
    (_body(stream="yes"), "stream"),
    (_body(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (_body(tool_choice="sometimes"), "tool_choice"),
    (_body(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name"),
    (_body(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type"),
    (_body(tools=[{"type": "function"}]), "tools[0].function"),
    (_body(functions=[{"name": "f"}]), "functions"),
    (_body(response_format={"type": "yaml"}), "response_format.type"),
    (_body(metadata={"a": 1}), "metadata.a"),
])
def test_parse_request_rejects_bad_input_naming_the_field(body: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        openai_chat.parse_request(body)
    assert raised.value.param == param


def test_build_request_from_an_anthropic_client() -> None:
    req = anthropic_messages.parse_request({
        "model": "claude", "max_tokens": 1000, "system": "Be brief.",
        "stop_sequences": ["END", "STOP"], "temperature": 0.3, "metadata": {"user_id": "u-9"},
        "thinking": {"type": "enabled", "budget_tokens": 5000}, "top_k": 4,
        "tools": [{"name": "shot", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Taking shots."},
                {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {"n": 1}},
                {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {"n": 2}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "here"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": PNG}}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": "camera offline"},
                {"type": "text", "text": "Well?"}]},
        ]})
    dropped: list[str] = []
    body = openai_chat.build_request(req, upstream_model="gpt-up", stream=True,
                                     options=CodecOptions(reasoning=True), dropped=dropped)
    assert sdk_valid(body) == body
    assert (req.dropped, dropped) == (("top_k",), [])
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "Taking shots.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "shot", "arguments": '{"n":1}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "shot", "arguments": '{"n":2}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "here"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: camera offline"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "Well?"}]},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "shot", "parameters": {"type": "object"}}}]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("required", False)
    assert (body["model"], body["max_tokens"], body["stop"], body["temperature"]) \
        == ("gpt-up", 1000, ["END", "STOP"], 0.3)
    assert (body["reasoning_effort"], body["user"]) == ("medium", "u-9")
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
    assert "top_k" not in body


def test_build_request_options_choose_token_field_and_reasoning_replay() -> None:
    req = openai_chat.parse_request(_body(max_tokens=50, messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "reasoning_content": "r", "content": "a"},
        {"role": "user", "content": "q2"}]))
    plain = openai_chat.build_request(req, upstream_model="m", stream=False, options=OPTIONS)
    tuned = openai_chat.build_request(req, upstream_model="m", stream=False, options=CodecOptions(
        openai_max_tokens_field="max_completion_tokens", replay_reasoning_content=True))
    assert (plain["max_tokens"], "reasoning_content" in plain["messages"][1]) == (50, False)
    assert (tuned["max_completion_tokens"], tuned["messages"][1]["reasoning_content"]) \
        == (50, "r")
    assert "stream" not in plain and "stream_options" not in plain


def test_unknown_fields_pass_through_to_an_openai_upstream() -> None:
    req = openai_chat.parse_request(_body(seed=3, logprobs=True, frequency_penalty=0.5))
    body = openai_chat.build_request(req, upstream_model="m", stream=False, options=OPTIONS)
    assert (body["seed"], body["logprobs"], body["frequency_penalty"]) == (3, True, 0.5)
    assert body["model"] == "m"  # known fields are never overwritten by extra


def test_parse_response_reads_reasoning_tools_and_cached_usage() -> None:
    resp = openai_chat.parse_response({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "kimi-k2",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "reasoning_content": "plan", "content": "Sure.",
            "tool_calls": [{"id": "functions.f:0", "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 64},
                  "completion_tokens_details": {"reasoning_tokens": 7}}})
    assert resp.content == (ThinkingPart("plan"), TextPart("Sure."),
                            ToolCallPart("functions.f:0", "f", '{"x": 1}'))
    assert resp.stop_reason == "tool_use"  # "stop" after tool calls still means run the tools
    assert resp.usage == Usage(input_tokens=100, output_tokens=20, cached_tokens=64,
                               reasoning_tokens=7)
    with pytest.raises(UpstreamFailed):
        openai_chat.parse_response({"id": "x", "choices": []})


def test_format_response_is_a_valid_chat_completion() -> None:
    resp = anthropic_messages.parse_response({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 7, "output_tokens": 9}})
    body = openai_chat.format_response(resp, model="public", request_id="req_9", created=5)
    completion = openai.types.chat.ChatCompletion.model_validate(body)
    message = completion.choices[0].message
    assert (completion.id, completion.created, completion.model) == ("chatcmpl-req_9", 5,
                                                                     "public")
    assert message.content is None and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.arguments == '{"a":[1]}'
    assert body["choices"][0]["message"]["reasoning_content"] == "t"
    assert (completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens,
            completion.usage.total_tokens) == (10, 7, 19)


def decode(*chunks: dict[str, Any]) -> list[StreamEvent]:
    decoder = openai_chat.StreamDecoder()
    return [ev for chunk in chunks for ev in decoder.feed(None, chunk)] + decoder.finish()


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c1", "model": "m", "choices": choices, **extra}


def test_decoder_waits_for_a_tool_name_and_makes_up_missing_ids() -> None:
    events = decode(
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]}),
        chunk({}, "tool_calls"))
    start = events[1]
    assert isinstance(start, ToolCallStart) and start.name == "f"
    assert start.id.startswith("call_") and len(start.id) > 10
    assert events[2:] == [ToolArgsDelta(0, '{"a":1}'), BlockStop(0), Stop("tool_use")]


def test_decoder_reads_reasoning_field_and_usage_beside_finish_reason() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    events = decode(chunk({"role": "assistant", "reasoning": "think"}),
                    chunk({"content": "ok"}), chunk({}, "length", usage=usage),
                    chunk(None, usage=usage))
    assert events == [MessageStart("c1", "m"), ThinkingDelta(0, "think"), BlockStop(0),
                      TextDelta(1, "ok"), BlockStop(1), Stop("max_tokens"),
                      UsageUpdate(Usage(input_tokens=5, output_tokens=2))]


def test_decoder_keeps_interleaved_tool_fragments_on_their_own_call() -> None:
    def frag(index: int, args: str, **first: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, "function": {"arguments": args},
                                      **first}]})
    events = decode(frag(0, "{", id="a", function={"name": "f", "arguments": "{"}),
                    frag(1, "{", id="b", function={"name": "g", "arguments": "{"}),
                    frag(0, "}"), frag(1, "}"),
                    {"id": "c1", "choices": [{"index": 1, "delta": {"content": "other choice"}}]},
                    chunk({}, "stop"))
    args: dict[int, str] = {}
    for ev in events:
        if isinstance(ev, ToolArgsDelta):
            args[ev.index] = args.get(ev.index, "") + ev.partial_json
    assert args == {0: "{}", 1: "{}"}
    assert not any(isinstance(ev, TextDelta) for ev in events)
    assert events[-1] == Stop("tool_use")


def test_encoder_without_include_usage_ends_with_finish_and_done() -> None:
    encoder = openai_chat.StreamEncoder(model="m", request_id="r", include_usage=False,
                                        created=1)
    out = encoder.feed(ToolCallStart(0, "call_1", "f")) + encoder.finish()
    assert [payload if isinstance(payload, str) else payload["choices"][0]["finish_reason"]
            for _, payload in out] == [None, None, "tool_calls", "[DONE]"]
    assert out[1][1]["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0, "id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": ""}}


def test_a_thinking_budget_maps_to_no_effort_when_the_deployment_says_so() -> None:
    req = anthropic_messages.parse_request({
        "model": "m", "max_tokens": 9000, "thinking": {"type": "enabled", "budget_tokens": 8000},
        "messages": [{"role": "user", "content": "hi"}]})
    mapped = openai_chat.build_request(req, upstream_model="m", stream=False,
                                       options=CodecOptions(reasoning=True))
    dropped: list[str] = []
    off = openai_chat.build_request(req, upstream_model="m", stream=False,
                                    options=CodecOptions(reasoning=True, budget_to_effort={}),
                                    dropped=dropped)
    assert (mapped["reasoning_effort"], "reasoning_effort" in off) == ("high", False)
    assert dropped == ["thinking"]


@pytest.mark.parametrize("reasoning, effort, dropped", [
    (None, None, ["thinking", "output_config.effort"]),
    (False, None, ["thinking", "output_config.effort"]),
    (True, "high", []),
])
def test_claude_code_thinking_reaches_only_a_route_that_reasons(reasoning, effort,
                                                                  dropped) -> None:
    req = anthropic_messages.parse_request({
        "model": "m", "max_tokens": 32000, "thinking": {"type": "adaptive"},
        "output_config": {"effort": "max"}, "messages": [{"role": "user", "content": "hi"}]})
    left_out: list[str] = []
    body = openai_chat.build_request(req, upstream_model="m", stream=False, dropped=left_out,
                                     options=CodecOptions(reasoning=reasoning,
                                                          max_output_tokens=16384))
    assert (body.get("reasoning_effort"), left_out) == (effort, dropped)
    assert body["max_tokens"] == 16384


@pytest.mark.parametrize("reasoning, sent", [(None, "low"), (True, "low"), (False, None)])
def test_an_openai_clients_own_effort_passes_unless_the_route_cannot_reason(reasoning,
                                                                             sent) -> None:
    req = openai_chat.parse_request({"model": "m", "reasoning_effort": "low",
                                     "messages": [{"role": "user", "content": "hi"}]})
    body = openai_chat.build_request(req, upstream_model="m", stream=False,
                                     options=CodecOptions(reasoning=reasoning))
    assert body.get("reasoning_effort") == sent
