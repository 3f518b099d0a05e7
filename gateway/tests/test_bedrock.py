"""The `bedrock` kind, live: the gateway signs with SigV4 and reads AWS event streams from a
fake Bedrock on loopback that checks every signature with botocore (gateway/tests/
fake_clouds.py). boto3's own `bedrock-runtime` client checks the fake first; then the official
`openai` and `anthropic` SDKs reach Converse (a Nova model) and the Messages passthrough (a
Claude model, InvokeModel) through the gateway, on every surface, streamed and not, and the
ledger row holds the tokens per class and their cost.

Prices: 1.00 input, 0.50 cache read, 1.25 cache write, 2.00 output, USD per million tokens;
the fake reports 6 uncached + 3 read + 2 written input tokens and 7 output tokens:
6 x 1.00 + 3 x 0.50 + 2 x 1.25 + 7 x 2.00 = 24 per million.
"""
from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import boto3
import botocore.exceptions
import openai
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer

from gateway.adapters.bedrock import credential_cache
from gateway.tests.fake_clouds import (CACHE_READ, CACHE_WRITE, OUTPUT, REPLY, TOOL_INPUT,
                                       UNCACHED, FakeBedrock, aws_event)
from usage.models import UsageRecord

ACCESS_KEY, SECRET_KEY, REGION = "AKIAFAKEGATEWAY00001", "fake/secret+key/for/tests", "eu-west-3"
NOVA = "amazon.nova-lite-v1:0"
CLAUDE = "anthropic.claude-sonnet-4-5-20250929-v1:0"
COST = Decimal("0.0000240000")
INPUT = UNCACHED + CACHE_READ + CACHE_WRITE


@pytest.fixture(autouse=True)
def _no_aws_network(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    credential_cache.clear()
    yield
    credential_cache.clear()


@pytest.fixture(scope="session")
def fake_bedrock() -> FakeBedrock:
    return FakeBedrock(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)


@pytest.fixture
def bedrock(fake_bedrock, transactional_db):
    """Provider `aws` (kind bedrock) on the fake: `nova` (Converse) and `claude` (InvokeModel,
    the Messages passthrough)."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    fake_bedrock.received.clear()
    config_apply(spec=config_parse(f"""
providers:
  - name: aws
    kind: bedrock
    base_url: {fake_bedrock.url}
    api_key: "{ACCESS_KEY}:{SECRET_KEY}"
    translation: {{region: {REGION}}}
    models:
      nova: {NOVA}
      claude: {CLAUDE}
prices:
  - {{model: "{NOVA}", input: "1.00", output: "2.00", cached_input: "0.50",
      cache_write_5m: "1.25"}}
  - {{model: "{CLAUDE}", input: "1.00", output: "2.00", cached_input: "0.50",
      cache_write_5m: "1.25"}}
"""))
    return fake_bedrock


def _boto(fake: FakeBedrock, *, secret: str = SECRET_KEY):
    return boto3.client("bedrock-runtime", endpoint_url=fake.url, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}))


def test_event_stream_frames_decode_with_botocores_parser():
    buffer = EventStreamBuffer()
    frame = aws_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hé"}})
    buffer.add_data(frame[:5])
    assert list(buffer) == []
    buffer.add_data(frame[5:])
    [message] = list(buffer)
    assert message.headers[":event-type"] == "contentBlockDelta"
    assert json.loads(message.payload)["delta"]["text"] == "hé"


def test_boto3_reads_the_fakes_converse_and_streams(fake_bedrock):
    client = _boto(fake_bedrock)
    answer = client.converse(modelId=NOVA, messages=[{"role": "user", "content": [
        {"text": "hi"}]}])
    assert answer["output"]["message"]["content"] == [{"text": REPLY}]
    assert answer["usage"]["cacheReadInputTokens"] == CACHE_READ
    events = list(client.converse_stream(modelId=NOVA, messages=[
        {"role": "user", "content": [{"text": "hi"}]}])["stream"])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e) == REPLY
    assert events[-1]["metadata"]["usage"]["outputTokens"] == OUTPUT
    chunks = list(client.invoke_model_with_response_stream(modelId=CLAUDE, body=json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]}))["body"])
    kinds = [json.loads(c["chunk"]["bytes"])["type"] for c in chunks]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    # boto3 escapes the model id's ':' in the path, and the fake verified that signature.
    assert fake_bedrock.received[0].path == "/model/amazon.nova-lite-v1%3A0/converse"


def test_the_fake_refuses_a_bad_signature(fake_bedrock):
    rejected = fake_bedrock.rejected
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        _boto(fake_bedrock, secret="not-the-secret").converse(
            modelId=NOVA, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert fake_bedrock.rejected == rejected + 1


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _anthropic(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


def _billed_row(ledger_rows, *, surface: str, stream: bool, model: str) -> UsageRecord:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert (row.surface, row.stream, row.status, row.usage_source, row.provider_name,
            row.upstream_model) == (surface, stream, "ok", "reported", "aws", model)
    assert (row.input_tokens, row.cached_tokens, row.cache_write_5m_tokens,
            row.output_tokens) == (INPUT, CACHE_READ, CACHE_WRITE, OUTPUT)
    assert row.cost_usd == COST
    return row


def _ask(surface: str, client_url: str, key: str, model: str, stream: bool) -> str:
    """The reply text a client of `surface` gets for "hi"."""
    if surface == "openai.chat":
        client = _openai(client_url, key)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True}) if c.choices)
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
    if surface == "openai.responses":
        client = _openai(client_url, key)
        if stream:
            with client.responses.stream(model=model, input="hi") as events:
                return events.get_final_response().output_text
        return client.responses.create(model=model, input="hi").output_text
    client = _anthropic(client_url, key)
    kwargs = dict(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.usage.cache_read_input_tokens == CACHE_READ
    return message.content[0].text


SURFACES = ("openai.chat", "openai.responses", "anthropic.messages")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_converse_serves_every_surface_with_usage_and_cost(
        gateway_url, bedrock, api_key, ledger_rows, surface, stream):
    assert _ask(surface, gateway_url, api_key, "nova", stream) == REPLY
    _billed_row(ledger_rows, surface=surface, stream=stream, model=NOVA)
    [seen] = bedrock.received
    operation = "converse-stream" if stream else "converse"
    assert seen.path == f"/model/amazon.nova-lite-v1%3A0/{operation}"
    assert seen.body["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]
    assert "model" not in seen.body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_claude_on_bedrock_is_served_through_invoke_model(
        gateway_url, bedrock, api_key, ledger_rows, surface, stream):
    assert _ask(surface, gateway_url, api_key, "claude", stream) == REPLY
    _billed_row(ledger_rows, surface=surface, stream=stream, model=CLAUDE)
    [seen] = bedrock.received
    assert seen.path.endswith("/invoke-with-response-stream" if stream else "/invoke")
    assert seen.body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in seen.body and "stream" not in seen.body


def test_a_passed_through_stream_is_anthropics_without_bedrocks_metrics(
        gateway_url, bedrock, api_key):
    import httpx

    with httpx.stream("POST", f"{gateway_url}/v1/messages", timeout=20, json={
            "model": "claude", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"}) as response:
        body = response.read().decode()
    assert body.rstrip().endswith('data: {"type":"message_stop"}')
    assert "invocationMetrics" not in body and '"model":"claude"' in body


def test_a_messages_client_is_passed_through_with_its_betas_in_the_body(
        gateway_url, bedrock, api_key):
    message = _anthropic(gateway_url, api_key).messages.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
        extra_body={"top_k": 5})
    assert message.content[0].text == REPLY
    [seen] = bedrock.received
    assert seen.body["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert seen.body["top_k"] == 5 and "anthropic-beta" not in seen.headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_tool_call_through_converse_reaches_an_openai_client(
        gateway_url, bedrock, api_key, stream):
    client = _openai(gateway_url, api_key)
    kwargs = dict(model="nova", messages=[{"role": "user", "content": "weather?"}],
                  tools=[{"type": "function", "function": {
                      "name": "get_weather", "parameters": {"type": "object", "properties": {
                          "city": {"type": "string"}}}}}])
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        calls = [c.choices[0].delta.tool_calls for c in chunks
                 if c.choices and c.choices[0].delta.tool_calls]
        name = calls[0][0].function.name
        arguments = "".join(call[0].function.arguments or "" for call in calls)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        name, arguments = choice.message.tool_calls[0].function.name, \
            choice.message.tool_calls[0].function.arguments
        finish = choice.finish_reason
    assert (name, json.loads(arguments), finish) == ("get_weather", TOOL_INPUT, "tool_calls")
    [seen] = bedrock.received
    assert seen.body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


def test_an_exception_mid_stream_ends_the_clients_stream_with_an_error(
        gateway_url, bedrock, api_key, ledger_rows):
    bedrock.exception = "throttlingException"
    with pytest.raises(openai.APIError) as caught:
        list(_openai(gateway_url, api_key).chat.completions.create(
            model="nova", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "throttlingException" in str(caught.value)
    [row] = ledger_rows(1)
    assert (row.status, row.error_type) == ("upstream_error", "stream_error")


def test_a_request_signed_with_the_wrong_secret_is_a_credentials_error(
        gateway_url, fake_bedrock, api_key, transactional_db, ledger_rows):
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: aws
    kind: bedrock
    base_url: {fake_bedrock.url}
    api_key: "{ACCESS_KEY}:wrong-secret"
    translation: {{region: {REGION}}}
    models: {{nova: "{NOVA}"}}
"""))
    with pytest.raises(openai.APIStatusError) as caught:
        _openai(gateway_url, api_key).chat.completions.create(
            model="nova", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "credentials" in caught.value.message
    [row] = ledger_rows(1)
    assert row.error_type == "http_403"


def test_without_a_key_the_credential_chain_signs_from_the_environment(
        gateway_url, fake_bedrock, api_key, transactional_db, monkeypatch):
    from providers.config_file import config_parse
    from providers.services import config_apply

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    config_apply(spec=config_parse(f"""
providers:
  - name: aws
    kind: bedrock
    base_url: {fake_bedrock.url}
    translation: {{region: {REGION}}}
    models: {{nova: "{NOVA}"}}
"""))
    assert _ask("openai.chat", gateway_url, api_key, "nova", False) == REPLY


def test_the_admin_connection_test_reaches_converse_and_invoke(bedrock):
    from providers.admin import provider_connection_test
    from providers.models import ModelRoute, Provider

    provider = Provider.objects.get(name="aws")
    result = provider_connection_test(provider)
    assert result.ok, result.text
    assert "outputTokens 7" in result.text
    ModelRoute.objects.filter(upstream_model=NOVA).update(enabled=False)
    result = provider_connection_test(provider)
    assert result.ok, result.text
    assert bedrock.received[-1].path.endswith("/invoke")
