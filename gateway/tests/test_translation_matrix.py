"""Every client surface against every upstream kind, streaming and not, through a live gateway.

Clients are the official SDKs (openai: Chat Completions and Responses; anthropic: Messages);
upstreams are the fake OpenAI-compatible and Anthropic servers and the offline mock. Each case
checks what the client gets (text, tool calls with their arguments reassembled exactly, stop
reasons, reasoning, usage) and the ledger row (tokens including cached, cost, surface, status).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from usage.pricing import cost_usd
from providers.selectors import PriceInfo

SURFACES = ("openai.chat", "openai.responses", "anthropic.messages")
UPSTREAMS = {  # public model -> (provider, price per million: input, output, cached)
    "gpt-test": ("fake-a", ("1.00", "2.00", "0.50")),
    "claude-test": ("fake-anth", ("3.00", "15.00", "0.30")),
    "mock-test": ("mock-m", ("0.15", "0.60", None)),
}
FAKE_REPLY = "Hello from the fake upstream, here is your answer."
CALLS = [{"name": "get_weather", "arguments": json.dumps({"location": "Zürich", "unit": "c"})},
         {"name": "get_time", "arguments": json.dumps({"zone": "Europe/Zurich", "fmt": [24]})}]
SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}}


@dataclass
class Outcome:
    """What a client of any surface received, in neutral terms."""
    text: str = ""
    thinking: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON text)
    stop: str = ""  # the surface's own stop vocabulary
    usage: tuple[int, int, int] = (0, 0, 0)  # input incl. cached, output, cached


@pytest.fixture
def every_upstream(fake_provider, fake_anthropic_provider, mock_provider):
    return fake_provider


def _chat(url: str, key: str, model: str, stream: bool, tools: bool) -> Outcome:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
    kwargs = dict(model=model, messages=[{"role": "user", "content": "Hello"}])
    if tools:
        kwargs["tools"] = [{"type": "function", "function": {"name": c["name"],
                                                             "parameters": SCHEMA}}
                           for c in CALLS]
    if not stream:
        completion = client.chat.completions.create(**kwargs)
        message = completion.choices[0].message
        u = completion.usage
        return Outcome(text=message.content or "",
                       thinking=(message.model_extra or {}).get("reasoning_content") or "",
                       calls=[(c.function.name, c.function.arguments)
                              for c in message.tool_calls or []],
                       stop=completion.choices[0].finish_reason,
                       usage=(u.prompt_tokens, u.completion_tokens,
                              u.prompt_tokens_details.cached_tokens))
    out, calls = Outcome(), {}
    for chunk in client.chat.completions.create(**kwargs, stream=True,
                                                stream_options={"include_usage": True}):
        assert chunk.model == model
        if chunk.usage is not None:
            u = chunk.usage
            out.usage = (u.prompt_tokens, u.completion_tokens,
                         u.prompt_tokens_details.cached_tokens)
        for choice in chunk.choices:
            out.text += choice.delta.content or ""
            out.thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            for call in choice.delta.tool_calls or []:
                name, args = calls.get(call.index, ("", ""))
                calls[call.index] = (name + (call.function.name or ""),
                                     args + (call.function.arguments or ""))
            out.stop = choice.finish_reason or out.stop
    out.calls = [calls[i] for i in sorted(calls)]
    return out


def _responses(url: str, key: str, model: str, stream: bool, tools: bool) -> Outcome:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
    kwargs = dict(model=model, input="Hello")
    if tools:
        kwargs["tools"] = [{"type": "function", "name": c["name"], "parameters": SCHEMA}
                           for c in CALLS]
    streamed: dict[str, str] = {}
    if stream:
        # The final event is response.completed, or response.incomplete (which the SDK's
        # get_final_response() does not accept) when the output was cut short.
        for event in client.responses.create(**kwargs, stream=True):
            if event.type == "response.function_call_arguments.delta":
                streamed[event.item_id] = streamed.get(event.item_id, "") + event.delta
            elif event.type in ("response.completed", "response.incomplete"):
                response = event.response
    else:
        response = client.responses.create(**kwargs)
    u = response.usage
    out = Outcome(text=response.output_text, usage=(
        u.input_tokens, u.output_tokens, u.input_tokens_details.cached_tokens))
    for item in response.output:
        if item.type == "function_call":
            if stream:
                assert streamed[item.id] == item.arguments
            out.calls.append((item.name, item.arguments))
        elif item.type == "reasoning":
            out.thinking += "".join(s.text for s in item.summary)
    out.stop = response.status if response.incomplete_details is None \
        else response.incomplete_details.reason
    return out


def _anthropic(url: str, key: str, model: str, stream: bool, tools: bool) -> Outcome:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)
    kwargs = dict(model=model, max_tokens=1000, messages=[{"role": "user", "content": "Hello"}])
    if tools:
        kwargs["tools"] = [{"name": c["name"], "input_schema": SCHEMA} for c in CALLS]
    streamed: dict[int, str] = {}
    if stream:
        with client.messages.stream(**kwargs) as events:
            for event in events:
                if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    streamed[event.index] = streamed.get(event.index, "") + event.delta.partial_json
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    u = message.usage
    out = Outcome(stop=message.stop_reason, usage=(
        u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0),
        u.output_tokens, u.cache_read_input_tokens or 0))
    for index, block in enumerate(message.content):
        if block.type == "text":
            out.text += block.text
        elif block.type == "thinking":
            out.thinking += block.thinking
        elif block.type == "tool_use":
            out.calls.append((block.name, streamed[index] if stream else json.dumps(block.input)))
    return out


CLIENTS = {"openai.chat": _chat, "openai.responses": _responses,
           "anthropic.messages": _anthropic}
TEXT_STOP = {"openai.chat": "stop", "openai.responses": "completed",
             "anthropic.messages": "end_turn"}
TOOL_STOP = {"openai.chat": "tool_calls", "openai.responses": "completed",
             "anthropic.messages": "tool_use"}


def _assert_row(row, *, surface: str, model: str, stream: bool, usage: tuple[int, int, int]):
    provider, (inp, outp, cached) = UPSTREAMS[model]
    assert (row.surface, row.public_model, row.provider_name) == (surface, model, provider)
    assert (row.status, row.http_status, row.stream, row.usage_source) == \
        ("ok", 200, stream, "reported")
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == usage
    price = PriceInfo(id=0, input_per_mtok=Decimal(inp), output_per_mtok=Decimal(outp),
                      cached_input_per_mtok=Decimal(cached) if cached else None,
                      effective_from=row.created_at)
    assert row.cost_usd == cost_usd(price=price, input_tokens=usage[0], output_tokens=usage[1],
                                    cached_tokens=usage[2]) > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("surface", SURFACES)
def test_text(gateway_url, every_upstream, api_key, ledger_rows, surface, model, stream):
    every_upstream.behave("fake-a", cached_tokens=3)
    every_upstream.behave("fake-anth", cached_tokens=3)
    out = CLIENTS[surface](gateway_url, api_key, model, stream, tools=False)
    assert out.text == ("Mock reply: Hello" if model == "mock-test" else FAKE_REPLY)
    assert out.stop == TEXT_STOP[surface] and out.calls == []
    [row] = ledger_rows(1)
    if model != "mock-test":
        assert out.usage == (11, 7, 3)
    _assert_row(row, surface=surface, model=model, stream=stream, usage=out.usage)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
@pytest.mark.parametrize("surface", SURFACES)
def test_parallel_tool_calls(gateway_url, every_upstream, api_key, ledger_rows, surface, model,
                             stream):
    every_upstream.behave(UPSTREAMS[model][0], tool_calls=CALLS)
    out = CLIENTS[surface](gateway_url, api_key, model, stream, tools=True)
    assert [name for name, _ in out.calls] == ["get_weather", "get_time"]
    if stream:  # streamed fragments, reassembled byte for byte
        assert [args for _, args in out.calls] == [c["arguments"] for c in CALLS]
    else:
        assert [json.loads(args) for _, args in out.calls] == \
            [json.loads(c["arguments"]) for c in CALLS]
    assert out.stop == TOOL_STOP[surface]
    _assert_row(ledger_rows(1)[0], surface=surface, model=model, stream=stream, usage=(11, 7, 0))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("surface, model", [("openai.chat", "claude-test"),
                                            ("openai.responses", "claude-test"),
                                            ("anthropic.messages", "gpt-test")])
def test_reasoning_crosses_dialects(gateway_url, every_upstream, api_key, surface, model,
                                    stream):
    every_upstream.behave(UPSTREAMS[model][0], thinking="First, the greeting.")
    out = CLIENTS[surface](gateway_url, api_key, model, stream, tools=False)
    assert out.thinking == "First, the greeting."
    assert out.text == FAKE_REPLY


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("surface, model, finish, expected", [
    ("anthropic.messages", "gpt-test", "length", "max_tokens"),
    ("openai.responses", "gpt-test", "length", "max_output_tokens"),
    ("openai.chat", "claude-test", "max_tokens", "length"),
    ("openai.chat", "claude-test", "refusal", "content_filter"),
    ("anthropic.messages", "gpt-test", "content_filter", "refusal"),
])
def test_stop_reasons_are_mapped(gateway_url, every_upstream, api_key, surface, model, finish,
                                 expected, stream):
    every_upstream.behave(UPSTREAMS[model][0], finish=finish)
    assert CLIENTS[surface](gateway_url, api_key, model, stream, tools=False).stop == expected


def test_anthropic_request_reaches_an_openai_upstream_faithfully(gateway_url, every_upstream,
                                                                 api_key):
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0)
    client.messages.create(
        model="gpt-test", max_tokens=300, system=[{"type": "text", "text": "Be brief."}],
        stop_sequences=["END"], tool_choice={"type": "tool", "name": "get_weather"},
        tools=[{"name": "get_weather", "input_schema": SCHEMA}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"location": "Bern"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom",
                 "is_error": True}]},
        ])
    body = every_upstream.calls("fake-a")[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location":"Bern"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"},
    ]
    assert (body["max_tokens"], body["stop"]) == (300, ["END"])
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_document_to_an_openai_upstream_is_a_clear_400(gateway_url, every_upstream, api_key):
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="gpt-test", max_tokens=10, messages=[{"role": "user",
            "content": [{"type": "document", "source": {
                "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}])
    assert "documents" in info.value.body["error"]["message"]
    assert not every_upstream.calls()


@pytest.mark.parametrize("surface, model", [("openai.chat", "claude-test"),
                                            ("openai.responses", "claude-test"),
                                            ("anthropic.messages", "gpt-test")])
def test_upstream_failure_is_502_in_the_surface_shape(gateway_url, every_upstream, api_key,
                                                      ledger_rows, surface, model):
    every_upstream.behave(UPSTREAMS[model][0], status=500)
    error = openai.APIStatusError if surface.startswith("openai") else anthropic.APIStatusError
    with pytest.raises(error) as info:
        CLIENTS[surface](gateway_url, api_key, model, False, tools=False)
    assert info.value.status_code == 502
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.http_status) == (surface, "upstream_error", 502)


@pytest.mark.parametrize("surface, model, expected", [
    ("openai.chat", "claude-test",
     lambda events: "error" in events[-2][1] and events[-1][1] == "[DONE]"),
    ("anthropic.messages", "gpt-test", lambda events: events[-1][0] == "error"),
])
def test_translated_stream_cut_ends_with_the_surface_error_event(
        gateway_url, every_upstream, api_key, ledger_rows, surface, model, expected):
    every_upstream.behave(UPSTREAMS[model][0], cut_after=3)
    path = {"openai.chat": "/v1/chat/completions", "anthropic.messages": "/v1/messages"}[surface]
    response = httpx.post(f"{gateway_url}{path}", headers={"x-api-key": api_key}, timeout=20,
                          json={"model": model, "max_tokens": 100, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]})
    events, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, line[6:] if line == "data: [DONE]" else json.loads(line[6:])))
            name = None
    assert expected(events)
    [row] = ledger_rows(1)
    assert (row.status, row.usage_source) == ("upstream_error", "estimated")
    assert row.output_tokens > 0


@pytest.mark.parametrize("surface, model", [("anthropic.messages", "gpt-test"),
                                            ("openai.chat", "claude-test"),
                                            ("openai.responses", "claude-test")])
def test_in_band_upstream_error_ends_the_stream_with_the_surface_error(
        gateway_url, every_upstream, api_key, ledger_rows, surface, model):
    every_upstream.behave(UPSTREAMS[model][0], error_event_after=2, error_message="Overloaded")
    if surface == "openai.responses":  # the SDK yields error events rather than raising
        client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
        events = list(client.responses.create(model=model, input="Hello", stream=True))
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert events[-2].message == events[-1].response.error.message == "Overloaded"
    else:
        error = anthropic.APIStatusError if surface == "anthropic.messages" else openai.APIError
        with pytest.raises(error) as info:
            CLIENTS[surface](gateway_url, api_key, model, True, tools=False)
        assert "Overloaded" in str(info.value)
    [row] = ledger_rows(1)
    assert (row.surface, row.status, row.error_type) == (surface, "upstream_error", "stream_error")
