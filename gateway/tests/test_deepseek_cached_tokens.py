"""DeepSeek-style cache hits (`usage.prompt_cache_hit_tokens`, no `prompt_tokens_details`) are
billed at the cached rate on every path from an OpenAI-compatible upstream: Chat Completions
passed through (JSON and stream), legacy completions, and translated to Messages and to
Responses, through a live gateway with the official SDKs as clients.

Prices (conftest `fake_provider`): 1.00 input, 0.50 cached input, 2.00 output, USD per million.
"""
from __future__ import annotations

from decimal import Decimal

import anthropic
import openai
import pytest

from usage.models import UsageRecord

CACHED = 5
# Chat: 11 prompt tokens, 5 of them cache hits, 7 output: 6 x 1.00 + 5 x 0.50 + 7 x 2.00.
CHAT_COST = Decimal("0.0000225000")
# Legacy completions: 9 prompt tokens, 5 hits, 4 output: 4 x 1.00 + 5 x 0.50 + 4 x 2.00.
COMPLETIONS_COST = Decimal("0.0000145000")


@pytest.fixture
def deepseek(fake_provider):
    fake_provider.behave("fake-a", usage_shape="deepseek", cached_tokens=CACHED)
    return fake_provider


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _row(ledger_rows, *, surface: str, stream: bool) -> UsageRecord:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert (row.surface, row.stream, row.status, row.usage_source) == \
        (surface, stream, "ok", "reported")
    return row


def test_the_fake_reports_usage_in_deepseeks_shape(gateway_url, deepseek, api_key):
    raw = _openai(gateway_url, api_key).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    usage = raw.http_response.json()["usage"]
    assert usage["prompt_cache_hit_tokens"] == CACHED and "prompt_tokens_details" not in usage


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_native_chat_completions_bill_cache_hits_at_the_cached_rate(
        gateway_url, deepseek, api_key, ledger_rows, stream):
    client = _openai(gateway_url, api_key)
    kwargs = dict(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        client.chat.completions.create(**kwargs)
    row = _row(ledger_rows, surface="openai.chat", stream=stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (11, CACHED, 7)
    assert row.cost_usd == CHAT_COST


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_legacy_completions_bill_cache_hits_at_the_cached_rate(
        gateway_url, deepseek, api_key, ledger_rows, stream):
    client = _openai(gateway_url, api_key)
    if stream:
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="gpt-test", prompt="Say hello", stream=True) if c.choices)
    else:
        text = client.completions.create(model="gpt-test", prompt="Say hello").choices[0].text
    assert text == "Hello from the fake upstream, here is your answer."
    row = _row(ledger_rows, surface="openai.completions", stream=stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (9, CACHED, 4)
    assert row.cost_usd == COMPLETIONS_COST


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_messages_translated_from_deepseek_bill_and_report_cache_reads(
        gateway_url, deepseek, api_key, ledger_rows, stream):
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0,
                                 timeout=20)
    kwargs = dict(model="gpt-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    # Anthropic's input_tokens leave the cache reads out.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (11 - CACHED, CACHED, 7)
    row = _row(ledger_rows, surface="anthropic.messages", stream=stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (11, CACHED, 7)
    assert row.cost_usd == CHAT_COST


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_translated_from_deepseek_bill_and_report_cached_tokens(
        gateway_url, deepseek, api_key, ledger_rows, stream):
    client = _openai(gateway_url, api_key)
    if stream:
        [response] = [e.response for e in client.responses.create(
            model="gpt-test", input="hi", stream=True) if e.type == "response.completed"]
    else:
        response = client.responses.create(model="gpt-test", input="hi")
    usage = response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens,
            usage.output_tokens) == (11, CACHED, 7)
    row = _row(ledger_rows, surface="openai.responses", stream=stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (11, CACHED, 7)
    assert row.cost_usd == CHAT_COST
