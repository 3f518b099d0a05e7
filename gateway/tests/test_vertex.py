"""The `vertex` kind, live: the gateway gets OAuth 2.0 tokens for a service-account key from
a fake Google token endpoint (which checks the JWT assertion's signature) and calls a fake
Vertex AI on loopback (gateway/tests/fake_clouds.py): Anthropic's models through rawPredict /
streamRawPredict with the Messages body, Gemini's through generateContent /
streamGenerateContent with the Gemini codec. The official `openai` and `anthropic` SDKs are the
clients, on every surface, streamed and not; the ledger row holds the tokens and their cost.

Prices: 1.00 input, 0.50 cache read, 1.25 cache write, 2.00 output, USD per million tokens.
Claude: 6 uncached + 3 read + 2 written input, 7 output: 24 per million. Gemini reports no
cache writes: 11 prompt tokens of which 3 cached, 7 output: 8 + 1.5 + 14 = 23.5 per million.
"""
from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest

from gateway.adapters.vertex import tokens
from gateway.tests.fake_clouds import (CACHE_READ, CACHE_WRITE, OUTPUT, REPLY, UNCACHED,
                                       FakeVertex, service_account_key)
from gateway.tests.test_bedrock import SURFACES, _ask
from usage.models import UsageRecord

REGION, PROJECT = "us-east5", "fake-project"
CLAUDE = "claude-sonnet-4-5@20250929"
GEMINI = "gemini-2.5-flash"
PREFIX = f"/v1/projects/{PROJECT}/locations/{REGION}/publishers"


@pytest.fixture(scope="session")
def fake_vertex() -> FakeVertex:
    return FakeVertex()


@pytest.fixture(scope="session")
def service_key(fake_vertex) -> dict:
    info, private = service_account_key(f"{fake_vertex.url}/token")
    fake_vertex.public_key = private.public_key()
    return info


@pytest.fixture(autouse=True)
def _fresh_tokens():
    tokens.clear()
    yield
    tokens.clear()


def _apply(fake: FakeVertex, key: dict) -> None:
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: gcp
    kind: vertex
    base_url: {fake.url}
    api_key: '{json.dumps(key)}'
    translation: {{region: {REGION}, project: {PROJECT}}}
    models:
      claude: "{CLAUDE}"
      gemini: {GEMINI}
prices:
  - {{model: "{CLAUDE}", input: "1.00", output: "2.00", cached_input: "0.50",
      cache_write_5m: "1.25"}}
  - {{model: {GEMINI}, input: "1.00", output: "2.00", cached_input: "0.50"}}
"""))


@pytest.fixture
def vertex(fake_vertex, service_key, transactional_db):
    fake_vertex.received.clear()
    fake_vertex.token_lifetime_s = 3600
    _apply(fake_vertex, service_key)
    return fake_vertex


def _row(ledger_rows, *, surface: str, stream: bool, model: str) -> UsageRecord:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert (row.surface, row.stream, row.status, row.usage_source, row.provider_name,
            row.upstream_model) == (surface, stream, "ok", "reported", "gcp", model)
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_claude_on_vertex_serves_every_surface_through_raw_predict(
        gateway_url, vertex, api_key, ledger_rows, surface, stream):
    assert _ask(surface, gateway_url, api_key, "claude", stream) == REPLY
    row = _row(ledger_rows, surface=surface, stream=stream, model=CLAUDE)
    assert (row.input_tokens, row.cached_tokens, row.cache_write_5m_tokens,
            row.output_tokens) == (UNCACHED + CACHE_READ + CACHE_WRITE, CACHE_READ,
                                   CACHE_WRITE, OUTPUT)
    assert row.cost_usd == Decimal("0.0000240000")
    [seen] = vertex.received
    verb = "streamRawPredict" if stream else "rawPredict"
    assert seen.path == f"{PREFIX}/anthropic/models/{CLAUDE}:{verb}"
    assert seen.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in seen.body
    assert seen.body.get("stream", False) is stream


def _ask_gemini(surface: str, url: str, key: str, stream: bool) -> str:
    if surface != "anthropic.messages":
        return _ask(surface, url, key, "gemini", stream)
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)
    kwargs = dict(model="gemini", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**kwargs) as events:
            return events.get_final_message().content[0].text
    return client.messages.create(**kwargs).content[0].text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_gemini_on_vertex_serves_every_surface(
        gateway_url, vertex, api_key, ledger_rows, surface, stream):
    assert _ask_gemini(surface, gateway_url, api_key, stream) == REPLY
    row = _row(ledger_rows, surface=surface, stream=stream, model=GEMINI)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (
        UNCACHED + CACHE_READ + CACHE_WRITE, CACHE_READ, OUTPUT)
    assert row.cost_usd == Decimal("0.0000235000")
    [seen] = vertex.received
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    assert seen.path == f"{PREFIX}/google/models/{GEMINI}:{verb}"
    assert seen.body["contents"][-1]["parts"] == [{"text": "hi"}]


def test_a_token_is_fetched_once_and_again_before_it_expires(
        gateway_url, vertex, api_key):
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    before = vertex.token_requests
    for _ in range(2):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert vertex.token_requests == before + 1
    # A token this close to its expiry (google-auth refreshes from 3 min 45 s before) is
    # replaced on the next request, never sent.
    vertex.token_lifetime_s = 120
    tokens.clear()
    for _ in range(2):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert vertex.token_requests == before + 3
    tokens_sent = [s.headers["Authorization"] for s in vertex.received[-2:]]
    assert tokens_sent[0] != tokens_sent[1]


def test_a_key_the_token_endpoint_refuses_is_a_credentials_error(
        gateway_url, fake_vertex, api_key, transactional_db, ledger_rows):
    forged, _ = service_account_key(f"{fake_vertex.url}/token")
    _apply(fake_vertex, forged)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="claude",
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "service-account credentials" in caught.value.message
    assert forged["private_key"][40:80] not in caught.value.message
    [row] = ledger_rows(1)
    assert row.error_type == "google_token"


def test_the_admin_connection_test_reaches_vertex(vertex):
    from providers.admin import provider_connection_test
    from providers.models import Provider

    result = provider_connection_test(Provider.objects.get(name="gcp"))
    assert result.ok, result.text
    assert vertex.received[-1].path.endswith(":rawPredict")


def test_the_messages_envelopes_are_the_bodies_the_clouds_document():
    """Vertex's streamRawPredict example and Bedrock's InvokeModel example for Claude, built
    from a Messages request."""
    from gateway.codecs import anthropic_messages
    from gateway.dialects import dialect_for
    from gateway.types import CodecOptions

    req = anthropic_messages.parse_request({
        "model": "claude", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": "Hey Claude!"}]})
    body = anthropic_messages.build_request(req, upstream_model=CLAUDE, stream=True,
                                            options=CodecOptions())
    assert dialect_for("vertex_messages").envelope(body, True) == {
        "anthropic_version": "vertex-2023-10-16", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hey Claude!"}]}]}
    assert dialect_for("bedrock_messages").envelope(body, True) == {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hey Claude!"}]}]}
