"""POST /v1/messages/count_tokens on the cloud kinds, live, with the `anthropic` SDK's
`messages.count_tokens` as the client: the Gemini API's `:countTokens` (the request as
`generateContentRequest`), Bedrock's CountTokens (`/model/{id}/count-tokens`,
SigV4-signed; a Converse route counts `{"input": {"converse": …}}`, a Claude route the
InvokeModel body, base64, in `{"input": {"invokeModel": {"body"}}}`), Vertex's `:countTokens`
for Gemini and `publishers/anthropic/models/count-tokens:rawPredict` for Claude. The fakes
(gateway/tests/fake_clouds.py) refuse any other body and answer fixed counts, so the count the
client gets is the upstream's; a model Bedrock cannot count falls back to the estimate. No
ledger row: counting is free."""
from __future__ import annotations

import base64
import json

import anthropic
import pytest

from gateway.tests.fake_azure_gemini import GEMINI_COUNT
from gateway.tests.fake_clouds import COUNT_CLAUDE, COUNT_CONVERSE, COUNT_GEMINI, COUNT_INVOKE
from gateway.tests.test_bedrock import (CLAUDE, NOVA, _no_aws_network, bedrock,  # noqa: F401
                                        fake_bedrock)
from gateway.tests.test_vertex import CLAUDE as VERTEX_CLAUDE
from gateway.tests.test_vertex import GEMINI, PREFIX
from gateway.tests.test_vertex import _fresh_tokens, fake_vertex, service_key  # noqa: F401
from gateway.tests.test_gemini import gem  # noqa: F401
from gateway.tests.test_vertex import vertex  # noqa: F401
from usage.models import UsageRecord

SYSTEM = "Answer in one word."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _count(url: str, key: str, model: str) -> tuple[int, str | None]:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)
    raw = client.messages.with_raw_response.count_tokens(model=model, system=SYSTEM,
                                                         messages=MESSAGES)
    return raw.parse().input_tokens, raw.headers.get("x-gateway-provider")


def test_bedrock_converse_route_counts_with_count_tokens_converse(gateway_url, bedrock,
                                                                  api_key):
    assert _count(gateway_url, api_key, "nova") == (COUNT_CONVERSE, "aws")
    [seen] = bedrock.received
    assert bedrock.rejected == 0  # signed like every Bedrock request
    assert seen.path == f"/model/{NOVA.replace(':', '%3A')}/count-tokens"
    assert seen.body == {"input": {"converse": {
        "system": [{"text": SYSTEM}],
        "messages": [{"role": "user", "content": [{"text": MESSAGES[0]["content"]}]}]}}}
    assert UsageRecord.objects.count() == 0


def test_bedrock_claude_route_counts_the_invoke_model_body(gateway_url, bedrock, api_key):
    assert _count(gateway_url, api_key, "claude") == (COUNT_INVOKE, "aws")
    [seen] = bedrock.received
    assert seen.path == f"/model/{CLAUDE.replace(':', '%3A')}/count-tokens"
    invoke = json.loads(base64.b64decode(seen.body["input"]["invokeModel"]["body"]))
    assert invoke == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1,
                      "system": SYSTEM, "messages": MESSAGES}


def test_a_bedrock_model_that_cannot_count_falls_back_to_the_estimate(gateway_url, bedrock,
                                                                       api_key):
    bedrock.no_count.add(NOVA)
    try:
        count, provider = _count(gateway_url, api_key, "nova")
    finally:
        bedrock.no_count.discard(NOVA)
    assert provider is None and 0 < count not in (COUNT_CONVERSE, COUNT_INVOKE)
    assert len(bedrock.received) == 1


def test_vertex_gemini_counts_with_count_tokens(gateway_url, vertex, api_key):
    assert _count(gateway_url, api_key, "gemini") == (COUNT_GEMINI, "gcp")
    [seen] = vertex.received
    assert seen.path == f"{PREFIX}/google/models/{GEMINI}:countTokens"
    assert seen.body == {"systemInstruction": {"parts": [{"text": SYSTEM}]},
                         "contents": [{"role": "user",
                                       "parts": [{"text": MESSAGES[0]["content"]}]}]}


def test_claude_on_vertex_counts_with_count_tokens_raw_predict(gateway_url, vertex, api_key):
    assert _count(gateway_url, api_key, "claude") == (COUNT_CLAUDE, "gcp")
    [seen] = vertex.received
    assert seen.path == f"{PREFIX}/anthropic/models/count-tokens:rawPredict"
    assert seen.body == {"model": VERTEX_CLAUDE, "system": SYSTEM, "messages": MESSAGES}


def test_gemini_api_counts_with_count_tokens_and_the_whole_request(gateway_url, gem, api_key):
    assert _count(gateway_url, api_key, "gem-model") == (GEMINI_COUNT, "gem")
    [seen] = gem.seen("/gemini/v1beta/models/")
    assert seen.path == "/gemini/v1beta/models/gemini-2.5-flash:countTokens"
    assert seen.body == {"generateContentRequest": {
        "model": "models/gemini-2.5-flash",
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "contents": [{"role": "user", "parts": [{"text": MESSAGES[0]["content"]}]}]}}
