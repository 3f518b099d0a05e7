"""The OpenAI Responses codec: client requests in (from the official `openai` SDK, captured
through an in-memory transport), `response` objects and event streams out, checked with the
SDK's own models and stream accumulator."""
from __future__ import annotations

import json
from typing import Any, Callable

import httpx2
import openai
import pytest
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.codecs import openai_chat, openai_responses
from gateway.errors import InvalidRequest
from gateway.types import (ChatResponse, CodecOptions, ImagePart, Message, Reasoning,
                           RedactedThinkingPart, ResponseFormat, SignatureDelta, Stop, TextDelta,
                           TextPart, ThinkingDelta, ThinkingPart, Tool, ToolArgsDelta,
                           ToolCallPart, ToolCallStart, ToolChoice, ToolResultPart, Usage,
                           UsageUpdate)

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5"
       "ErkJggg==")
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
_EVENT = TypeAdapter(ResponseStreamEvent)


def sent_by_sdk(call: Callable[[openai.OpenAI], Any]) -> dict[str, Any]:
    """The JSON body the openai SDK sends for `call` (answered with a minimal response)."""
    captured: dict[str, Any] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = json.loads(request.content)
        return httpx2.Response(200, json=openai_responses.format_response(
            ChatResponse("x", (TextPart("ok"),), "end_turn", Usage()), model="m",
            request_id="r"))
    client = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    call(client)
    return captured["body"]


def test_parse_request_reads_a_replayed_conversation_from_the_sdk() -> None:
    body = sent_by_sdk(lambda c: c.responses.create(
        model="gpt-5", instructions="Be brief.", max_output_tokens=800, temperature=0.5,
        top_p=0.9, parallel_tool_calls=False, reasoning={"effort": "high", "summary": "auto"},
        text={"format": {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}},
        tools=[{"type": "function", "name": "get_weather", "description": "Weather",
                "parameters": SCHEMA, "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"}, metadata={"k": "v"},
        store=False, include=["reasoning.encrypted_content"],
        input=[
            {"role": "developer", "content": "Metric units."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Weather in Bern?"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}",
                 "detail": "auto"}]},
            {"type": "reasoning", "id": "rs_1", "encrypted_content": "sig",
             "summary": [{"type": "summary_text", "text": "Look it up."}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Bern"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "12°C"},
            {"role": "user", "content": "And tomorrow?"},
        ]))
    req = openai_responses.parse_request(body)
    assert req.surface == "openai_responses"
    assert req.system == (TextPart("Be brief."), TextPart("Metric units."))
    assert req.messages == (
        Message("user", (TextPart("Weather in Bern?"),
                         ImagePart(data=PNG, media_type="image/png", detail="auto"))),
        Message("assistant", (ThinkingPart("Look it up.", "sig"), TextPart("Checking."),
                              ToolCallPart("call_1", "get_weather", '{"city":"Bern"}'))),
        Message("user", (ToolResultPart("call_1", (TextPart("12°C"),)),)),
        Message("user", (TextPart("And tomorrow?"),)),
    )
    assert req.tools == (Tool("get_weather", "Weather", SCHEMA, strict=True),)
    assert (req.tool_choice, req.parallel_tool_calls) == (ToolChoice("tool", "get_weather"),
                                                          False)
    assert (req.max_tokens, req.temperature, req.top_p) == (800, 0.5, 0.9)
    assert req.reasoning == Reasoning(effort="high")
    assert req.response_format == ResponseFormat("json_schema", name="w", schema=SCHEMA,
                                                 strict=True)
    assert req.metadata == {"k": "v"}
    assert req.extra == {"store": False, "include": ["reasoning.encrypted_content"]}


def test_string_input_is_one_user_turn_and_maps_onto_chat() -> None:
    req = openai_responses.parse_request({"model": "m", "input": "Hi", "max_output_tokens": 9,
                                          "text": {"format": {"type": "json_object"}},
                                          "store": True})
    assert req.messages == (Message("user", (TextPart("Hi"),)),)
    body = openai_chat.build_request(req, upstream_model="up", stream=False,
                                     options=CodecOptions())
    assert body == {"model": "up", "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 9, "response_format": {"type": "json_object"}}


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": [{"type": "no_such_item", "id": "msg_1"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file_1"}]}]}, "input[0].content[0].file_id"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
     "input[0].call_id"),
    ({"model": "m", "input": "x", "tools": [{"type": "no_such_tool"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tool_choice": {"type": "no_such_tool"}},
     "tool_choice.type"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ({"model": "m", "input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
])
def test_parse_request_rejects_bad_input_naming_the_field(body: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        openai_responses.parse_request(body)
    assert raised.value.param == param


def test_format_response_is_a_valid_response_echoing_the_request() -> None:
    req = openai_responses.parse_request({
        "model": "m", "input": "x", "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
        "tool_choice": "required", "reasoning": {"effort": "low"}})
    resp = ChatResponse("up", (ThinkingPart("t", "sig"), RedactedThinkingPart("opaque"),
                               TextPart("a"), TextPart("b"), ToolCallPart("call_1", "f", "{}")),
                        "tool_use", Usage(input_tokens=10, output_tokens=4, cached_tokens=6,
                                          reasoning_tokens=2))
    body = openai_responses.format_response(resp, model="public", request_id="req_1",
                                            request=req, created=7)
    response = Response.model_validate(body)
    assert (response.id, response.status, response.created_at) == ("resp_req_1", "completed", 7)
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.output[0].encrypted_content == "sig"
    assert response.output_text == "ab"
    assert (response.instructions, response.tool_choice, response.tools[0].name) \
        == ("Be brief.", "required", "f")
    assert (response.usage.input_tokens_details.cached_tokens,
            response.usage.output_tokens_details.reasoning_tokens,
            response.usage.total_tokens) == (6, 2, 14)


def test_max_tokens_stop_makes_an_incomplete_response() -> None:
    resp = ChatResponse("up", (TextPart("cut"),), "max_tokens", Usage(1, 1))
    body = openai_responses.format_response(resp, model="m", request_id="r")
    assert (body["status"], body["incomplete_details"]) == ("incomplete",
                                                            {"reason": "max_output_tokens"})
    encoder = openai_responses.StreamEncoder(model="m", request_id="r", created=1)
    out = encoder.feed(TextDelta(0, "cut")) + encoder.feed(Stop("max_tokens")) + encoder.finish()
    assert out[-1][0] == "response.incomplete"
    assert out[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_is_accumulated_by_the_sdk_with_signature_as_encrypted_content() -> None:
    encoder = openai_responses.StreamEncoder(model="m", request_id="r", created=1)
    events = [ThinkingDelta(0, ""), SignatureDelta(0, "sig"), TextDelta(1, "Hi"),
              ToolCallStart(2, "call_1", "f"), ToolArgsDelta(2, '{"a":'),
              ToolArgsDelta(2, "1}"), Stop("tool_use"), UsageUpdate(Usage(3, 4))]
    out = [e for ev in events for e in encoder.feed(ev)] + encoder.finish()
    assert [payload["sequence_number"] for _, payload in out] == list(range(len(out)))
    assert all(name == payload["type"] for name, payload in out)
    state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    for _, payload in out:
        state.handle_event(_EVENT.validate_python(payload))
    final = state._completed_response
    assert final is not None
    reasoning, message, call = final.output
    assert (reasoning.summary, reasoning.encrypted_content) == ([], "sig")
    assert message.content[0].text == "Hi"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "f", '{"a":1}')
    assert final.usage.total_tokens == 7
