"""/v1/completions and /v1/embeddings through a live gateway with the openai SDK."""
from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from usage.models import UsageRecord


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def test_completion_and_streamed_completion(gateway_url, fake_provider, api_key):
    client = _client(gateway_url, api_key)
    completion = client.completions.create(model="gpt-test", prompt="Say hello")
    assert completion.choices[0].text == "Hello from the fake upstream, here is your answer."
    assert completion.model == "gpt-test"
    assert fake_provider.calls()[0].path.endswith("/v1/completions")
    assert fake_provider.calls()[0].body["model"] == "up-gpt"
    chunks = list(client.completions.create(model="gpt-test", prompt="Say hello", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text
    rows = list(UsageRecord.objects.order_by("created_at"))
    assert [r.surface for r in rows] == ["openai.completions"] * 2
    assert {(r.input_tokens, r.output_tokens, r.usage_source) for r in rows} == {(9, 4, "reported")}
    assert rows[0].cost_usd == Decimal("0.0000170000")  # 9 in at 1.00 + 4 out at 2.00 per million


def test_embeddings_are_billed_as_input_tokens(gateway_url, fake_provider, api_key):
    result = _client(gateway_url, api_key).embeddings.create(model="gpt-test", input=["a", "b"])
    assert [d.embedding for d in result.data] == [[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]
    assert result.usage.prompt_tokens == 10
    row = UsageRecord.objects.get()
    assert (row.surface, row.input_tokens, row.output_tokens, row.cost_usd) == (
        "openai.embeddings", 10, 0, Decimal("0.0000100000"))


def test_mock_serves_both_offline(gateway_url, demo_key):
    client = _client(gateway_url, demo_key)
    assert client.completions.create(model="demo", prompt="ping").choices[0].text == "Mock reply: ping"
    first = client.embeddings.create(model="demo", input="same text", dimensions=16).data[0].embedding
    again = client.embeddings.create(model="demo", input="same text", dimensions=16).data[0].embedding
    assert len(first) == 16 and first == again
    assert abs(sum(v * v for v in first) - 1) < 1e-3


def test_embeddings_reject_bad_input_and_streaming(gateway_url, demo_key):
    client = _client(gateway_url, demo_key)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="demo", input=[])
    assert info.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo", prompt={"not": "a prompt"})
    assert UsageRecord.objects.count() == 0
