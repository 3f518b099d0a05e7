"""POST /v1/chat/completions through a live gateway, with the official openai SDK as client."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.tests.provider_settings import provider_translation_set
from usage.models import UsageRecord


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _wait_for_rows(count: int, timeout: float = 5.0) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(UsageRecord.objects.order_by("created_at"))
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    return list(UsageRecord.objects.order_by("created_at"))


def test_demo_model_completes_and_streams_offline(gateway_url, demo_key):
    client = _client(gateway_url, demo_key)
    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "ping pong"}])
    assert completion.choices[0].message.content == "Mock reply: ping pong"
    assert completion.model == "demo"
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "ping pong"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Mock reply: ping pong"
    rows = _wait_for_rows(2)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert all(r.provider_name == "mock" and r.usage_source == "reported" for r in rows)
    assert rows[0].cost_usd > 0


def test_plain_completion_is_billed_at_the_price_in_force(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", cached_tokens=3)
    raw = _client(gateway_url, api_key).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream, here is your answer."
    assert completion.model == "gpt-test"
    assert raw.headers["x-gateway-provider"] == "fake-a"
    request_id = raw.headers["x-request-id"]
    [call] = fake_provider.calls("fake-a")
    assert call.body["model"] == "up-gpt"
    assert call.headers["Authorization"] == "Bearer sk-fake-upstream-secret-a"
    row = UsageRecord.objects.get()
    assert row.request_id == request_id
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (11, 7, 3)
    # 8 uncached input at 1.00, 3 cached at 0.50, 7 output at 2.00 per million
    assert row.cost_usd == Decimal("0.0000235000")
    assert (row.status, row.http_status, row.usage_source) == ("ok", 200, "reported")
    assert row.public_model == "gpt-test" and row.upstream_model == "up-gpt"


def test_stream_relays_chunks_and_hides_usage_unless_asked(gateway_url, fake_provider, api_key):
    client = _client(gateway_url, api_key)
    chunks = list(client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from the fake upstream, here is your answer."
    assert all(c.usage is None for c in chunks)
    assert fake_provider.calls()[0].body["stream_options"] == {"include_usage": True}

    chunks = list(client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 11
    rows = _wait_for_rows(2)
    assert all((r.input_tokens, r.output_tokens, r.usage_source) == (11, 7, "reported") for r in rows)
    assert all(r.stream and r.ttft_ms is not None for r in rows)


def test_streamed_tool_call_arguments_arrive_whole(gateway_url, fake_provider, api_key):
    args = json.dumps({"location": "Paris, France", "unit": "celsius", "days": [1, 2, 3]})
    fake_provider.behave("fake-a", tool_call={"name": "get_weather", "arguments": args})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    client = _client(gateway_url, api_key)
    with client.chat.completions.stream(model="gpt-test", tools=tools,
                                        messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_fake1", "get_weather", args)
    assert final.choices[0].finish_reason == "tool_calls"
    assert fake_provider.calls()[0].body["tools"] == tools


def test_bad_key_is_401_in_openai_shape(gateway_url, demo_key):
    with pytest.raises(openai.AuthenticationError) as info:
        _client(gateway_url, "gw-not-a-real-key").chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.body["type"] == "authentication_error"
    assert "gw-not-a-real-key" not in info.value.message
    missing = httpx.post(f"{gateway_url}/v1/chat/completions", json={"model": "demo"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert UsageRecord.objects.count() == 0


def test_x_api_key_header_authenticates(gateway_url, demo_key):
    response = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"x-api-key": demo_key},
                          json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200


def test_unknown_model_is_404_and_forbidden_model_is_403(gateway_url, demo_key, make_key):
    with pytest.raises(openai.NotFoundError) as info:
        _client(gateway_url, demo_key).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    limited = make_key(models=["something-else"])
    with pytest.raises(openai.PermissionDeniedError):
        _client(gateway_url, limited).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"model": "demo"}).encode(), "messages"),
    (json.dumps({"model": "demo", "messages": [], "stream": "yes"}).encode(), "messages"),
    (json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                 "stream": "yes"}).encode(), "stream"),
    (json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                 "max_tokens": -5}).encode(), "max_tokens"),
    (json.dumps({"model": 42, "messages": []}).encode(), "model"),
])
def test_bad_bodies_are_400_in_openai_shape(gateway_url, demo_key, body, param):
    response = httpx.post(f"{gateway_url}/v1/chat/completions", content=body,
                          headers={"authorization": f"Bearer {demo_key}",
                                   "content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "Traceback" not in response.text
    assert UsageRecord.objects.count() == 0


def test_oversized_body_is_413(gateway_url, demo_key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    body = {"model": "demo", "messages": [{"role": "user", "content": "x" * 2000}]}
    response = httpx.post(f"{gateway_url}/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {demo_key}"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_request_id_is_echoed_and_ledger_keeps_it(gateway_url, demo_key):
    response = httpx.post(f"{gateway_url}/v1/chat/completions",
                          headers={"authorization": f"Bearer {demo_key}", "x-request-id": "client-abc-1"},
                          json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.headers["x-request-id"] == "client-abc-1"
    row = UsageRecord.objects.get()
    assert row.client_request_id == "client-abc-1" and row.request_id.startswith("req_")


def test_upstream_failure_fails_over_to_the_backup(gateway_url, fake_provider, api_key):
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: fake-b
    kind: openai
    base_url: {fake_provider.base_url("fake-b")}
    priority: 1
    models:
      gpt-test: up-gpt-backup
"""))
    fake_provider.behave("fake-a", status=500)
    raw = _client(gateway_url, api_key).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.status_code == 200
    assert raw.headers["x-gateway-provider"] == "fake-b"
    assert [c.provider for c in fake_provider.calls()] == ["fake-a", "fake-b"]
    row = UsageRecord.objects.get()
    assert (row.provider_name, row.upstream_model, row.status) == ("fake-b", "up-gpt-backup", "ok")


def test_every_deployment_failing_is_502_with_one_row(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", status=503, error_message="overloaded sk-fake-upstream-secret-a")
    with pytest.raises(openai.APIStatusError) as info:
        _client(gateway_url, api_key).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    row = UsageRecord.objects.get()
    assert (row.status, row.http_status, row.cost_usd) == ("upstream_error", 502, 0)


def test_upstream_client_error_is_relayed_as_400(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", status=400, error_message="context length exceeded")
    with pytest.raises(openai.BadRequestError) as info:
        _client(gateway_url, api_key).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert "context length exceeded" in info.value.message
    assert len(fake_provider.calls()) == 1


def test_stream_cut_mid_way_ends_with_error_event_and_a_row(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", cut_after=3)
    response = httpx.post(f"{gateway_url}/v1/chat/completions",
                          headers={"authorization": f"Bearer {api_key}"}, timeout=20,
                          json={"model": "gpt-test", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]})
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "upstream_error"
    assert events[-1] == "[DONE]"
    assert len(fake_provider.calls()) == 1  # never retried once bytes were sent
    row = _wait_for_rows(1)[0]
    assert row.status == "upstream_error" and row.usage_source == "estimated"
    assert row.output_tokens > 0


def test_client_disconnect_mid_stream_with_drain_on_disconnect_bills_what_the_upstream_produced(
        gateway_url, fake_provider, api_key):
    # By default the upstream is closed at once (gateway/tests/test_disconnects.py).
    provider_translation_set("fake-a", drain_on_disconnect=True)
    fake_provider.behave("fake-a", chunk_delay_s=0.2, reply="one two three four five six seven eight")
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions",
                      headers={"authorization": f"Bearer {api_key}"}, timeout=20,
                      json={"model": "gpt-test", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        for line in response.iter_lines():
            if '"content":"one"' in line:
                break
    rows = _wait_for_rows(1)
    assert len(rows) == 1
    assert rows[0].status == "client_disconnected"
    # The gateway drained the upstream after the client left, so usage is the upstream's own.
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].usage_source) == (11, 7, "reported")
    assert rows[0].cost_usd > 0
    assert fake_provider.hangups == 0


def test_provider_extra_headers_and_request_id_reach_the_upstream(gateway_url, fake_provider, api_key):
    Provider = __import__("providers.models", fromlist=["Provider"]).Provider
    from django.db import transaction

    from providers.services import config_version_bump

    Provider.objects.filter(name="fake-a").update(extra_headers={"OpenAI-Organization": "org-42"})
    with transaction.atomic():
        config_version_bump()
    httpx.post(f"{gateway_url}/v1/chat/completions", headers={"authorization": f"Bearer {api_key}",
                                                               "x-request-id": "trace-me-7"},
               json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    [call] = fake_provider.calls()
    assert call.headers["OpenAI-Organization"] == "org-42"
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["x-request-id"] == UsageRecord.objects.get().request_id, headers
    assert UsageRecord.objects.get().client_request_id == "trace-me-7"


def test_upstream_without_usage_is_estimated_and_marked(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", send_usage=False)
    client = _client(gateway_url, api_key)
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    list(client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                        stream=True))
    rows = _wait_for_rows(2)
    assert {r.usage_source for r in rows} == {"estimated"}
    assert all(r.input_tokens > 0 and r.output_tokens > 0 and r.cost_usd > 0 for r in rows)
