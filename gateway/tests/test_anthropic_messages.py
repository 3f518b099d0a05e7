"""POST /v1/messages and /v1/messages/count_tokens through a live gateway, with the official
anthropic SDK as client: the native Anthropic upstream (body passed through, model swapped),
errors in Anthropic's shape, and the ledger rows."""
from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import pytest

from gateway.tests.provider_settings import provider_translation_set
from usage.models import UsageRecord

WEATHER_TOOL = {"name": "get_weather", "description": "Weather at a place",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                 "required": ["location"]}}
ARGS = json.dumps({"location": "Zürich, CH", "unit": "celsius", "days": [1, 2, 3]},
                  ensure_ascii=False)
HELLO = [{"role": "user", "content": "Hello"}]


def _client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


def _sse(text: str) -> list[tuple[str | None, dict]]:
    """(event name, JSON data) of each event in an SSE body."""
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            name = None
    return events


def test_native_create_passes_the_body_through_and_bills_cached_tokens(
        gateway_url, fake_anthropic_provider, api_key):
    fake_anthropic_provider.behave("fake-anth", cached_tokens=3)
    raw = _client(gateway_url, api_key).messages.with_raw_response.create(
        model="claude-test", max_tokens=100, system="Be brief.", messages=HELLO,
        stop_sequences=["END"], metadata={"user_id": "u-1"}, extra_body={"temperature": 0.5})
    message = raw.parse()
    assert message.content[0].text == "Hello from the fake upstream, here is your answer."
    assert (message.model, message.stop_reason) == ("claude-test", "end_turn")
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (8, 3, 7)
    assert raw.headers["x-gateway-provider"] == "fake-anth"
    [call] = fake_anthropic_provider.calls("fake-anth")
    assert call.path.endswith("/v1/messages")
    assert call.body == {"model": "up-claude", "max_tokens": 100, "system": "Be brief.",
                         "messages": HELLO, "stop_sequences": ["END"],
                         "metadata": {"user_id": "u-1"}, "temperature": 0.5}
    assert call.headers["x-api-key"] == "sk-ant-fake-upstream-secret"
    # The client's own API version is passed through with its body.
    assert call.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert "Authorization" not in call.headers
    row = UsageRecord.objects.get()
    assert row.request_id == raw.headers["x-request-id"]
    assert (row.surface, row.status, row.usage_source) == ("anthropic.messages", "ok", "reported")
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (11, 7, 3)
    # 8 uncached at 3.00, 3 cached at 0.30, 7 output at 15.00 per million
    assert row.cost_usd == Decimal("0.0001299000")
    assert (row.public_model, row.upstream_model) == ("claude-test", "up-claude")


def test_native_stream_relays_events_with_text_stream_and_final_message(
        gateway_url, fake_anthropic_provider, api_key, ledger_rows):
    with _client(gateway_url, api_key).messages.stream(
            model="claude-test", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake upstream, here is your answer."
    assert final.model == "claude-test" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)
    assert fake_anthropic_provider.calls()[0].body["stream"] is True
    [row] = ledger_rows(1)
    assert (row.status, row.stream, row.usage_source) == ("ok", True, "reported")
    assert (row.input_tokens, row.output_tokens) == (11, 7) and row.ttft_ms is not None


def test_native_stream_tool_input_json_arrives_split_and_whole(
        gateway_url, fake_anthropic_provider, api_key, ledger_rows):
    fake_anthropic_provider.behave("fake-anth", preamble="Let me check.",
                                   tool_call={"name": "get_weather", "arguments": ARGS})
    partials = []
    with _client(gateway_url, api_key).messages.stream(
            model="claude-test", max_tokens=100, tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "Weather in Zürich?"}]) as stream:
        for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
        final = stream.get_final_message()
    assert len([p for p in partials if p]) > 1
    assert "".join(partials) == ARGS
    text, tool = final.content
    assert text.text == "Let me check."
    assert (tool.type, tool.id, tool.name) == ("tool_use", "toolu_fake1", "get_weather")
    assert tool.input == json.loads(ARGS)
    assert final.stop_reason == "tool_use"
    assert ledger_rows(1)[0].status == "ok"


def test_native_thinking_and_signature_reach_the_client(gateway_url, fake_anthropic_provider,
                                                         api_key):
    fake_anthropic_provider.behave("fake-anth", thinking="Let me think it through.")
    client = _client(gateway_url, api_key)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    message = client.messages.create(model="claude-test", max_tokens=4096, messages=HELLO,
                                     thinking=thinking)
    assert message.content[0].thinking == "Let me think it through."
    assert message.content[0].signature == "sig-fake-EqQBCgIYAhIM"
    with client.messages.stream(model="claude-test", max_tokens=4096, messages=HELLO,
                                thinking=thinking) as stream:
        final = stream.get_final_message()
    assert (final.content[0].thinking, final.content[0].signature) == \
        ("Let me think it through.", "sig-fake-EqQBCgIYAhIM")
    assert fake_anthropic_provider.calls()[0].body["thinking"] == thinking


def test_count_tokens_asks_an_anthropic_upstream_else_estimates(
        gateway_url, fake_anthropic_provider, mock_provider, api_key):
    client = _client(gateway_url, api_key)
    counted = client.messages.count_tokens(model="claude-test", messages=HELLO,
                                           system="Be brief.")
    assert counted.input_tokens == 23
    [call] = fake_anthropic_provider.calls()
    assert call.path.endswith("/v1/messages/count_tokens")
    assert call.body == {"model": "up-claude", "messages": HELLO, "system": "Be brief."}
    estimated = client.messages.count_tokens(
        model="mock-test", messages=[{"role": "user", "content": "word " * 100}])
    assert 100 < estimated.input_tokens < 200
    fake_anthropic_provider.behave("fake-anth", status=503)
    assert client.messages.count_tokens(model="claude-test", messages=HELLO).input_tokens > 0
    assert UsageRecord.objects.count() == 0


def test_bad_key_is_401_in_anthropic_shape(gateway_url, fake_anthropic_provider):
    with pytest.raises(anthropic.AuthenticationError) as info:
        _client(gateway_url, "sk-not-a-real-key").messages.create(
            model="claude-test", max_tokens=10, messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid API key"}}
    assert "sk-not-a-real-key" not in str(info.value.body)
    missing = httpx.post(f"{gateway_url}/v1/messages", json={"model": "claude-test"})
    assert missing.status_code == 401 and missing.json()["type"] == "error"
    assert UsageRecord.objects.count() == 0


def test_bearer_and_x_api_key_both_authenticate(gateway_url, mock_provider, api_key):
    body = {"model": "mock-test", "max_tokens": 50, "messages": HELLO}
    for headers in ({"x-api-key": api_key}, {"authorization": f"Bearer {api_key}"}):
        response = httpx.post(f"{gateway_url}/v1/messages", json=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["content"][0]["text"] == "Mock reply: Hello"


def test_unknown_model_is_404_in_anthropic_shape(gateway_url, fake_anthropic_provider, api_key):
    with pytest.raises(anthropic.NotFoundError) as info:
        _client(gateway_url, api_key).messages.create(model="no-such-model", max_tokens=10,
                                                      messages=HELLO)
    assert info.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("body, field", [
    ({"model": "claude-test", "messages": HELLO}, "max_tokens"),
    ({"model": "claude-test", "max_tokens": 10}, "messages"),
    ({"model": "claude-test", "max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]},
     "role"),
    ({"model": "claude-test", "max_tokens": 10, "messages": HELLO, "temperature": 3},
     "temperature"),
])
def test_invalid_body_is_400_naming_the_field(gateway_url, fake_anthropic_provider, api_key,
                                              body, field):
    response = httpx.post(f"{gateway_url}/v1/messages", json=body, headers={"x-api-key": api_key})
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert field in error["error"]["message"]
    assert not fake_anthropic_provider.calls() and UsageRecord.objects.count() == 0


def test_bad_json_is_400_in_anthropic_shape(gateway_url, api_key, fake_anthropic_provider):
    response = httpx.post(f"{gateway_url}/v1/messages", content=b"{nope",
                          headers={"x-api-key": api_key, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["type"] == "error"


def test_every_deployment_failing_is_502_with_one_row(gateway_url, fake_anthropic_provider,
                                                      api_key):
    fake_anthropic_provider.behave("fake-anth", status=529, error_message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(gateway_url, api_key).messages.create(model="claude-test", max_tokens=10,
                                                      messages=HELLO)
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"
    row = UsageRecord.objects.get()
    assert (row.status, row.http_status, row.cost_usd) == ("upstream_error", 502, 0)


def test_upstream_error_with_status_200_is_502(gateway_url, fake_anthropic_provider, api_key):
    fake_anthropic_provider.behave("fake-anth", error_in_200=True)
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(gateway_url, api_key).messages.create(model="claude-test", max_tokens=10,
                                                      messages=HELLO)
    assert info.value.status_code == 502
    assert UsageRecord.objects.get().status == "upstream_error"


def test_stream_cut_mid_way_ends_with_an_error_event(gateway_url, fake_anthropic_provider,
                                                     api_key, ledger_rows):
    fake_anthropic_provider.behave("fake-anth", cut_after=3)
    response = httpx.post(f"{gateway_url}/v1/messages", headers={"x-api-key": api_key},
                          timeout=20, json={"model": "claude-test", "max_tokens": 100,
                                            "stream": True, "messages": HELLO})
    events = _sse(response.text)
    assert events[0][0] == "message_start"
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": events[-1][1]["error"]["message"]}})
    with pytest.raises(anthropic.APIStatusError):
        with _client(gateway_url, api_key).messages.stream(
                model="claude-test", max_tokens=100, messages=HELLO) as stream:
            stream.get_final_message()
    rows = ledger_rows(2)
    assert {r.status for r in rows} == {"upstream_error"}
    # The prompt as the upstream reported it in message_start; the output estimated.
    assert rows[0].usage_source == "estimated" and rows[0].input_tokens == 11
    assert rows[0].output_tokens > 0


def test_in_band_error_event_is_relayed(gateway_url, fake_anthropic_provider, api_key,
                                        ledger_rows):
    fake_anthropic_provider.behave("fake-anth", error_event_after=2, error_message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as info:
        with _client(gateway_url, api_key).messages.stream(
                model="claude-test", max_tokens=100, messages=HELLO) as stream:
            stream.get_final_message()
    assert info.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert ledger_rows(1)[0].status == "upstream_error"


def test_client_disconnect_with_drain_on_disconnect_gets_one_row_with_the_upstreams_usage(
        gateway_url, fake_anthropic_provider, api_key, ledger_rows):
    # By default the upstream is closed at once (gateway/tests/test_disconnects.py).
    provider_translation_set("fake-anth", drain_on_disconnect=True)
    fake_anthropic_provider.behave("fake-anth", chunk_delay_s=0.2,
                                   reply="one two three four five six seven eight")
    with httpx.stream("POST", f"{gateway_url}/v1/messages", headers={"x-api-key": api_key},
                      timeout=20, json={"model": "claude-test", "max_tokens": 100,
                                        "stream": True, "messages": HELLO}) as response:
        for line in response.iter_lines():
            if '"text":"one"' in line:
                break
    rows = ledger_rows(1)
    assert len(rows) == 1
    assert rows[0].status == "client_disconnected"
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].usage_source) == \
        (11, 7, "reported")


def test_idempotency_key_replays_a_stream_and_charges_once(gateway_url, fake_anthropic_provider,
                                                           api_key, ledger_rows):
    body = {"model": "claude-test", "max_tokens": 100, "stream": True, "messages": HELLO}
    headers = {"x-api-key": api_key, "idempotency-key": "idem-msg-1"}
    first = httpx.post(f"{gateway_url}/v1/messages", json=body, headers=headers, timeout=20)
    ledger_rows(1)
    again = httpx.post(f"{gateway_url}/v1/messages", json=body, headers=headers, timeout=20)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content and _sse(again.text)[-1][0] == "message_stop"
    assert len(fake_anthropic_provider.calls()) == 1 and UsageRecord.objects.count() == 1
    other = httpx.post(f"{gateway_url}/v1/messages", json={**body, "max_tokens": 5},
                       headers=headers)
    assert other.status_code == 422 and other.json()["type"] == "error"


def test_budget_exhausted_is_429_in_anthropic_shape_with_a_rejected_row(
        gateway_url, fake_anthropic_provider, make_key):
    key = make_key(budget_usd="0.00001")
    with pytest.raises(anthropic.RateLimitError) as info:
        _client(gateway_url, key).messages.create(model="claude-test", max_tokens=1000,
                                                  messages=HELLO)
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert not fake_anthropic_provider.calls()
    row = UsageRecord.objects.get()
    assert (row.surface, row.status, row.http_status) == ("anthropic.messages", "rejected", 429)
