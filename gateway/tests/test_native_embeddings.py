"""POST /v1/embeddings on the cloud kinds that embed in their own wire format, live: the
official `openai` SDK's `client.embeddings.create` through the gateway to the fakes
(gateway/tests/fake_clouds.py, fake_azure_gemini.py), which refuse a body that is not the
cloud's own. Gemini API `:batchEmbedContents`, Vertex AI `:predict`, Bedrock InvokeModel for
Titan Text Embeddings v2 (one signed request per input) and Cohere Embed. The vectors are
the fakes' (`fake_vector`, exact in float32, so the SDK's default base64 answer decodes to
them), and the ledger row bills the tokens the upstream counted (Vertex, Titan: `reported`)
or the gateway's estimate (Gemini API and Cohere count none: `estimated`).

Price: 2.00 USD per million input tokens.
"""
from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest

from gateway.tests.fake_azure_gemini import GEMINI_KEY, fake_azure_gemini
from gateway.tests.fake_clouds import fake_token_count, fake_vector
from gateway.tests.test_bedrock import (ACCESS_KEY, REGION, SECRET_KEY,  # noqa: F401
                                        _no_aws_network, fake_bedrock)
from gateway.tests.test_vertex import (PROJECT, _fresh_tokens, fake_vertex,  # noqa: F401
                                       service_key)
from gateway.tests.test_vertex import REGION as VERTEX_REGION
from gateway.tokens import text_tokens
from usage.models import UsageRecord

TEXTS = ["The quick brown fox", "jumps over the lazy dog today"]
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
VERTEX_EMBED = "text-embedding-005"
GEMINI_EMBED = "gemini-embedding-001"


def _price(model: str) -> str:
    return f'  - {{model: "{model}", input: "2.00", output: "0"}}\n'


@pytest.fixture
def clouds(fake_bedrock, fake_vertex, service_key, transactional_db):  # noqa: F811
    from providers.config_file import config_parse
    from providers.services import config_apply

    gemini = fake_azure_gemini()
    fake_bedrock.received.clear()
    fake_vertex.received.clear()
    config_apply(spec=config_parse(f"""
providers:
  - name: gem
    kind: gemini
    base_url: {gemini.url("gemini")}/v1beta
    api_key: {GEMINI_KEY}
    models: {{gem-embed: {GEMINI_EMBED}}}
  - name: aws
    kind: bedrock
    base_url: {fake_bedrock.url}
    api_key: "{ACCESS_KEY}:{SECRET_KEY}"
    translation: {{region: {REGION}}}
    models: {{titan: "{TITAN}", cohere: "{COHERE}"}}
  - name: gcp
    kind: vertex
    base_url: {fake_vertex.url}
    api_key: '{json.dumps(service_key)}'
    translation: {{region: {VERTEX_REGION}, project: {PROJECT}}}
    models: {{vertex-embed: {VERTEX_EMBED}}}
prices:
{_price(GEMINI_EMBED)}{_price(TITAN)}{_price(COHERE)}{_price(VERTEX_EMBED)}"""))
    return {"gemini": gemini, "bedrock": fake_bedrock, "vertex": fake_vertex}


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _row(ledger_rows) -> UsageRecord:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert (row.surface, row.status, row.output_tokens) == ("openai.embeddings", "ok", 0)
    return row


def _cost(tokens: int) -> Decimal:
    return (Decimal(tokens) * Decimal("2.00") / 1_000_000).quantize(Decimal("1e-10"))


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_gemini_api_embeds_through_batch_embed_contents_and_bills_an_estimate(
        gateway_url, clouds, api_key, ledger_rows, encoding):
    kwargs = {} if encoding == "base64" else {"encoding_format": "float"}  # the SDK's default
    out = _client(gateway_url, api_key).embeddings.create(
        model="gem-embed", input=TEXTS, dimensions=4, **kwargs)
    assert [d.embedding for d in out.data] == [fake_vector(t, 4) for t in TEXTS]
    assert [d.index for d in out.data] == [0, 1] and out.model == "gem-embed"
    estimate = sum(text_tokens(t) for t in TEXTS)
    assert (out.usage.prompt_tokens, out.usage.total_tokens) == (estimate, estimate)
    [seen] = clouds["gemini"].seen("/gemini/v1beta/models/")
    assert seen.path == f"/gemini/v1beta/models/{GEMINI_EMBED}:batchEmbedContents"
    assert seen.body == {"requests": [
        {"model": f"models/{GEMINI_EMBED}", "content": {"parts": [{"text": t}]},
         "outputDimensionality": 4} for t in TEXTS]}
    row = _row(ledger_rows)
    assert (row.provider_name, row.upstream_model, row.input_tokens, row.usage_source) == (
        "gem", GEMINI_EMBED, estimate, "estimated")
    assert row.cost_usd == _cost(estimate)


def test_vertex_embeds_through_predict_and_bills_its_token_count(
        gateway_url, clouds, api_key, ledger_rows):
    out = _client(gateway_url, api_key).embeddings.create(model="vertex-embed", input=TEXTS,
                                                          dimensions=6)
    assert [d.embedding for d in out.data] == [fake_vector(t, 6) for t in TEXTS]
    counted = sum(fake_token_count(t) for t in TEXTS)
    assert out.usage.prompt_tokens == counted
    [seen] = clouds["vertex"].received
    assert seen.path == (f"/v1/projects/{PROJECT}/locations/{VERTEX_REGION}/publishers/google"
                         f"/models/{VERTEX_EMBED}:predict")
    assert seen.body == {"instances": [{"content": t} for t in TEXTS],
                         "parameters": {"outputDimensionality": 6}}
    row = _row(ledger_rows)
    assert (row.provider_name, row.input_tokens, row.usage_source) == ("gcp", counted,
                                                                        "reported")
    assert row.cost_usd == _cost(counted)


def test_titan_v2_gets_one_signed_invoke_per_input(gateway_url, clouds, api_key, ledger_rows):
    fake = clouds["bedrock"]
    out = _client(gateway_url, api_key).embeddings.create(model="titan", input=TEXTS,
                                                          dimensions=5)
    assert [d.embedding for d in out.data] == [fake_vector(t, 5) for t in TEXTS]
    counted = sum(fake_token_count(t) for t in TEXTS)
    assert out.usage.prompt_tokens == counted
    assert fake.rejected == 0  # every request's SigV4 signature checked out
    assert sorted(s.path for s in fake.received) == [f"/model/{TITAN.replace(':', '%3A')}"
                                                     "/invoke"] * 2
    assert sorted((s.body for s in fake.received), key=lambda b: b["inputText"]) == [
        {"inputText": t, "dimensions": 5, "normalize": True} for t in sorted(TEXTS)]
    row = _row(ledger_rows)
    assert (row.provider_name, row.upstream_model, row.input_tokens, row.usage_source) == (
        "aws", TITAN, counted, "reported")
    assert row.cost_usd == _cost(counted)


def test_cohere_embed_gets_one_invoke_with_every_text(gateway_url, clouds, api_key,
                                                      ledger_rows):
    fake = clouds["bedrock"]
    out = _client(gateway_url, api_key).embeddings.create(model="cohere", input=TEXTS[0])
    assert [d.embedding for d in out.data] == [fake_vector(TEXTS[0])]
    [seen] = fake.received
    assert seen.body == {"texts": [TEXTS[0]], "input_type": "search_document"}
    estimate = text_tokens(TEXTS[0])
    row = _row(ledger_rows)
    assert (row.input_tokens, row.usage_source, row.cost_usd) == (estimate, "estimated",
                                                                  _cost(estimate))


def test_token_arrays_to_a_cloud_kind_are_a_400_before_any_upstream_call(
        gateway_url, clouds, api_key, ledger_rows):
    with pytest.raises(openai.BadRequestError) as err:
        _client(gateway_url, api_key).embeddings.create(model="titan", input=[[1, 2, 3]])
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        _client(gateway_url, api_key).embeddings.create(model="titan", input="x",
                                                        encoding_format="float",
                                                        extra_body={"dimensions": 0})
    assert clouds["bedrock"].received == [] and UsageRecord.objects.count() == 0


def test_a_cloud_refusing_the_body_is_the_clients_400_with_its_row(
        gateway_url, clouds, api_key, ledger_rows):
    # Cohere Embed v3 has one size: the fake, as Bedrock, refuses `output_dimension`.
    with pytest.raises(openai.BadRequestError):
        _client(gateway_url, api_key).embeddings.create(model="cohere", input="hi",
                                                        dimensions=3)
    [row] = ledger_rows(1)
    assert (row.status, row.http_status, row.input_tokens) == ("upstream_error", 400, 0)
