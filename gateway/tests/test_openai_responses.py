"""POST /v1/responses through a live gateway, with the official openai SDK as client: requests
translated to Chat Completions (OpenAI-compatible and mock upstreams) and to Messages
(Anthropic upstreams), streamed events, function calls, errors in OpenAI's shape, ledger rows."""
from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.tests.provider_settings import provider_translation_set
from usage.models import UsageRecord

ARGS = json.dumps({"location": "Paris, France", "unit": "celsius"})
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather at a place",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _sse(text: str) -> list[tuple[str | None, dict | str]]:
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return events


def test_create_is_translated_to_chat_for_an_openai_upstream(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", cached_tokens=3, reasoning_tokens=2)
    raw = _client(gateway_url, api_key).responses.with_raw_response.create(
        model="gpt-test", instructions="Be brief.", input="Hi there", max_output_tokens=50,
        temperature=0.2)
    response = raw.parse()
    assert response.output_text == "Hello from the fake upstream, here is your answer."
    assert (response.status, response.model) == ("completed", "gpt-test")
    assert (response.usage.input_tokens, response.usage.output_tokens,
            response.usage.input_tokens_details.cached_tokens,
            response.usage.output_tokens_details.reasoning_tokens) == (11, 7, 3, 2)
    [call] = fake_provider.calls()
    assert call.path.endswith("/chat/completions")
    assert call.body == {"model": "up-gpt", "max_tokens": 50, "temperature": 0.2,
                         "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi there"}]}
    row = UsageRecord.objects.get()
    assert row.request_id == raw.headers["x-request-id"]
    assert (row.surface, row.status, row.usage_source) == ("openai.responses", "ok", "reported")
    assert (row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens) == \
        (11, 7, 3, 2)
    assert row.cost_usd == Decimal("0.0000235000")


def test_create_is_translated_to_messages_for_an_anthropic_upstream(
        gateway_url, fake_anthropic_provider, api_key):
    response = _client(gateway_url, api_key).responses.create(
        model="claude-test", input=[{"role": "developer", "content": "Be brief."},
                                    {"role": "user", "content": "Hi there"}])
    assert response.output_text == "Hello from the fake upstream, here is your answer."
    [call] = fake_anthropic_provider.calls()
    assert call.path.endswith("/v1/messages")
    cache = {"type": "ephemeral"}  # the breakpoints of automatic prompt caching
    assert call.body == {"model": "up-claude", "max_tokens": 4096, "system": [
        {"type": "text", "text": "Be brief.", "cache_control": cache}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hi there", "cache_control": cache}]}]}
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.provider_name) == (11, 7, "fake-anth")


def test_stream_events_follow_the_responses_grammar(gateway_url, fake_provider, api_key,
                                                   ledger_rows):
    stream = _client(gateway_url, api_key).responses.create(model="gpt-test", input="Hi",
                                                            stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake upstream, here is your answer."
    assert events[-1].response.usage.input_tokens == 11
    assert events[-1].response.output_text == text
    [row] = ledger_rows(1)
    assert (row.surface, row.stream, row.status, row.output_tokens) == \
        ("openai.responses", True, "ok", 7)


@pytest.mark.parametrize("provider", ["fake-a", "fake-anth"])
@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_arrive_whole(gateway_url, fake_provider, fake_anthropic_provider,
                                     api_key, provider, stream):
    fake_provider.behave(provider, tool_call={"name": "get_weather", "arguments": ARGS})
    model = {"fake-a": "gpt-test", "fake-anth": "claude-test"}[provider]
    client = _client(gateway_url, api_key)
    if stream:
        with client.responses.stream(model=model, input="Weather?", tools=TOOLS) as events:
            deltas = [e.delta for e in events
                      if e.type == "response.function_call_arguments.delta"]
            response = events.get_final_response()
        assert len(deltas) > 1 and "".join(deltas) == ARGS
    else:
        response = client.responses.create(model=model, input="Weather?", tools=TOOLS,
                                           tool_choice="required")
    [item] = response.output
    assert (item.type, item.name) == ("function_call", "get_weather")
    assert json.loads(item.arguments) == json.loads(ARGS)
    assert item.call_id in ("call_fake1", "toolu_fake1")
    sent = fake_provider.calls()[0].body
    if provider == "fake-anth":
        assert sent["tools"] == [{"name": "get_weather", "description": "Weather at a place",
                                  "input_schema": TOOLS[0]["parameters"],
                                  "cache_control": {"type": "ephemeral"}}]
    else:
        assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_function_call_output_goes_back_as_a_tool_result(gateway_url, fake_anthropic_provider,
                                                         api_key):
    _client(gateway_url, api_key).responses.create(model="claude-test", tools=TOOLS, input=[
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": ARGS},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"},
    ])
    messages = fake_anthropic_provider.calls()[0].body["messages"]
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": json.loads(ARGS)}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny",
         "cache_control": {"type": "ephemeral"}}]}


def test_mock_upstream_serves_responses(gateway_url, mock_provider, api_key, ledger_rows):
    client = _client(gateway_url, api_key)
    assert client.responses.create(model="mock-test", input="ping").output_text == \
        "Mock reply: ping"
    events = list(client.responses.create(model="mock-test", input="ping", stream=True))
    assert events[-1].response.output_text == "Mock reply: ping"
    rows = ledger_rows(2)
    assert {(r.provider_name, r.usage_source, r.status) for r in rows} == \
        {("mock-m", "reported", "ok")}


def test_errors_use_openai_shape(gateway_url, fake_provider, api_key):
    with pytest.raises(openai.AuthenticationError):
        _client(gateway_url, "gw-nope").responses.create(model="gpt-test", input="hi")
    with pytest.raises(openai.NotFoundError) as info:
        _client(gateway_url, api_key).responses.create(model="no-such-model", input="hi")
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        _client(gateway_url, api_key).responses.create(model="gpt-test", input="hi",
                                                       previous_response_id="resp_1")
    assert info.value.body["param"] == "previous_response_id"
    response = httpx.post(f"{gateway_url}/v1/responses", json={"model": "gpt-test"},
                          headers={"authorization": f"Bearer {api_key}"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    assert UsageRecord.objects.count() == 0
    fake_provider.behave("fake-a", status=500)
    with pytest.raises(openai.APIStatusError) as info:
        _client(gateway_url, api_key).responses.create(model="gpt-test", input="hi")
    assert info.value.status_code == 502
    assert UsageRecord.objects.get().status == "upstream_error"


def test_stream_cut_ends_with_error_and_response_failed(gateway_url, fake_provider, api_key,
                                                        ledger_rows):
    fake_provider.behave("fake-a", cut_after=3)
    response = httpx.post(f"{gateway_url}/v1/responses", timeout=20,
                          headers={"authorization": f"Bearer {api_key}"},
                          json={"model": "gpt-test", "input": "hi", "stream": True})
    events = _sse(response.text)
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-1][1]["response"]["status"] == "failed"
    [row] = ledger_rows(1)
    assert (row.status, row.usage_source) == ("upstream_error", "estimated")
    assert row.output_tokens > 0


def test_client_disconnect_with_drain_on_disconnect_gets_one_row_with_the_upstreams_usage(
        gateway_url, fake_provider, api_key, ledger_rows):
    provider_translation_set("fake-a", drain_on_disconnect=True)
    fake_provider.behave("fake-a", chunk_delay_s=0.2, reply="one two three four five six")
    with httpx.stream("POST", f"{gateway_url}/v1/responses", timeout=20,
                      headers={"authorization": f"Bearer {api_key}"},
                      json={"model": "gpt-test", "input": "hi", "stream": True}) as response:
        for line in response.iter_lines():
            if '"delta":"one"' in line:
                break
    rows = ledger_rows(1)
    assert len(rows) == 1
    assert (rows[0].status, rows[0].usage_source, rows[0].output_tokens) == \
        ("client_disconnected", "reported", 7)


CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Runs a command", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
     "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn one",
                "strict": False, "parameters": {"type": "object", "properties": {}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search", "external_web_access": False},
]
CODEX_OPTIONS = {"tool_choice": "auto", "parallel_tool_calls": True, "store": False,
                 "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
                 "prompt_cache_key": "0190-session", "client_metadata": {"turn_id": "t1"},
                 "service_tier": "auto", "truncation": "auto"}


@pytest.mark.parametrize("stream", [False, True])
def test_codex_default_tools_reach_a_chat_upstream_flattened_and_come_back_restored(
        gateway_url, fake_provider, api_key, stream):
    fake_provider.behave("fake-a", tool_call={"name": "multi_agent_v1__spawn_agent",
                                              "arguments": "{}"})
    response = httpx.post(f"{gateway_url}/v1/responses", timeout=20,
                          headers={"authorization": f"Bearer {api_key}"},
                          json={"model": "gpt-test", "input": "hi", "stream": stream,
                                "tools": CODEX_TOOLS, **CODEX_OPTIONS})
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-dropped"].split(", ") == [
        "tools.web_search", "reasoning.summary", "include", "prompt_cache_key",
        "client_metadata", "service_tier", "truncation"]
    if stream:
        [done] = [e for _, e in _sse(response.text) if e["type"] == "response.completed"]
        output = done["response"]["output"]
    else:
        output = response.json()["output"]
    [call] = output
    assert (call["type"], call["namespace"], call["name"]) == \
        ("function_call", "multi_agent_v1", "spawn_agent")
    [sent] = fake_provider.calls()
    assert [t["function"]["name"] for t in sent.body["tools"]] == \
        ["exec_command", "multi_agent_v1__spawn_agent", "apply_patch"]
    patch = sent.body["tools"][2]["function"]
    assert patch["parameters"]["properties"] == {
        "input": {"type": "string", "description": "The tool's input text"}}
    assert "start: /.+/" in patch["description"]
    for field in ("include", "prompt_cache_key", "service_tier", "store", "truncation"):
        assert field not in sent.body


@pytest.mark.parametrize("stream", [False, True])
def test_a_custom_tool_call_comes_back_as_custom_tool_call(gateway_url, fake_provider, api_key,
                                                           stream):
    patch = "*** Begin Patch\n*** Add File: hi.txt\n+hi\n*** End Patch"
    fake_provider.behave("fake-a", tool_call={"name": "apply_patch",
                                              "arguments": json.dumps({"input": patch})})
    client = _client(gateway_url, api_key)
    request = {"model": "gpt-test", "input": "write hi.txt", "tools": CODEX_TOOLS[2:3]}
    if stream:
        with client.responses.stream(**request) as s:
            response = s.get_final_response()
    else:
        response = client.responses.create(**request)
    [call] = response.output
    assert (call.type, call.name, call.input) == ("custom_tool_call", "apply_patch", patch)
    # The call and its output, replayed in the next turn, reach the upstream as a tool round.
    fake_provider.behave("fake-a", tool_call=None)
    client.responses.create(model="gpt-test", tools=CODEX_TOOLS[2:3], input=[
        {"role": "user", "content": "write hi.txt"},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch",
         "input": patch},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}])
    messages = fake_provider.calls()[-1].body["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "apply_patch", "arguments": json.dumps({"input": patch})}
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "Done!"}
