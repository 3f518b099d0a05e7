"""Costs per token class, from the providers' published usage objects through the codecs' own
usage readers, at the providers' list prices, as exact Decimals."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from datetime import datetime, timezone

import pytest

from gateway.codecs.anthropic_messages_output import usage_from_anthropic
from gateway.codecs.openai_chat_output import usage_from_openai
from gateway.call import Call
from providers.selectors import PriceInfo
from usage.pricing import cost_items, cost_usd

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _price(**rates) -> PriceInfo:
    values = {"cached_input_per_mtok": None, **rates}
    return PriceInfo(id=1, effective_from=EPOCH,
                     **{k: Decimal(v) if isinstance(v, str) else v for k, v in values.items()})


# Claude Sonnet 4.5 list prices (per MTok): $3 in, $15 out, $0.30 cache read, $3.75 5-minute
# write (1.25x), $6 1-hour write (2x); above 200k input tokens $6 / $22.50 / $0.60 / $7.50 / $12.
SONNET_45 = _price(input_per_mtok="3", output_per_mtok="15", cached_input_per_mtok="0.30",
                   cache_write_5m_per_mtok="3.75", cache_write_1h_per_mtok="6",
                   long_context_threshold=200_000, long_context_input_per_mtok="6",
                   long_context_output_per_mtok="22.50",
                   long_context_cached_input_per_mtok="0.60",
                   long_context_cache_write_5m_per_mtok="7.50",
                   long_context_cache_write_1h_per_mtok="12")


def _call_cost(usage, price: PriceInfo) -> Decimal:
    """What finish.py bills: the IR usage through the Call's transition and its classes."""
    call = Call(surface="test", client_request_id="")
    call.usage_reported(usage)
    return cost_usd(price=price, **call.tokens())


def test_sonnet_45_mixed_cache_ttls_bill_what_anthropic_charges():
    """Issue 17's measured request: 1,000 fresh + 5,000 cache-read + 2,000 5-minute-write +
    1,000 1-hour-write input tokens and 100 output tokens. Anthropic charges $0.0195 (the
    gateway used to bill $0.0150, every write at the plain input rate)."""
    usage = usage_from_anthropic({
        "input_tokens": 1000, "cache_read_input_tokens": 5000,
        "cache_creation_input_tokens": 3000, "output_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000}})
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_creation_tokens,
            usage.cache_creation_1h_tokens) == (9000, 5000, 3000, 1000)
    assert _call_cost(usage, SONNET_45) == Decimal("0.0195000000")


def test_anthropic_published_mixed_ttl_example():
    """The usage object of Anthropic's prompt-caching guide ("mixing different TTLs")."""
    usage = usage_from_anthropic({
        "input_tokens": 2048, "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 248, "output_tokens": 503,
        "cache_creation": {"ephemeral_1h_input_tokens": 100, "ephemeral_5m_input_tokens": 148}})
    # 2048 x 3 + 1800 x 0.30 + 148 x 3.75 + 100 x 6 + 503 x 15 = 15,384 micro-dollars
    assert _call_cost(usage, SONNET_45) == Decimal("0.0153840000")
    items = {i.token_class: (i.tokens, i.rate_per_mtok)
             for i in cost_items(price=SONNET_45, **_tokens(usage))}
    assert items["cache_write_5m"] == (148, Decimal("3.75"))
    assert items["cache_write_1h"] == (100, Decimal("6"))


def _tokens(usage) -> dict[str, int]:
    call = Call(surface="test", client_request_id="")
    call.usage_reported(usage)
    return call.tokens()


def test_unsplit_anthropic_cache_write_counts_as_five_minutes():
    usage = usage_from_anthropic({"input_tokens": 10, "cache_creation_input_tokens": 1000,
                                  "output_tokens": 0})
    assert _tokens(usage)["cache_write_5m_tokens"] == 1000
    assert _tokens(usage)["cache_write_1h_tokens"] == 0
    # 10 x 3 + 1000 x 3.75
    assert _call_cost(usage, SONNET_45) == Decimal("0.0037800000")


def test_null_cache_write_rates_fall_back_to_the_input_rate():
    plain = _price(input_per_mtok="3", output_per_mtok="15", cached_input_per_mtok="0.30")
    usage = usage_from_anthropic({
        "input_tokens": 1000, "cache_read_input_tokens": 5000,
        "cache_creation_input_tokens": 3000, "output_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000}})
    assert _call_cost(usage, plain) == Decimal("0.0150000000")


# o4-mini list prices: $1.10 in, $0.275 cached, $4.40 out (reasoning billed as output).
O4_MINI = _price(input_per_mtok="1.10", output_per_mtok="4.40", cached_input_per_mtok="0.275")


def test_openai_cached_and_reasoning_tokens():
    """The prompt of OpenAI's prompt-caching guide (2,006 tokens, 1,920 cached) with the output
    of its reasoning guide (1,186 tokens, 1,024 of them reasoning)."""
    usage = usage_from_openai({
        "prompt_tokens": 2006, "completion_tokens": 1186, "total_tokens": 3192,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1024, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}})
    assert _tokens(usage)["reasoning_tokens"] == 1024
    # 86 x 1.10 + 1920 x 0.275 + 1186 x 4.40 = 5,841 micro-dollars
    assert _call_cost(usage, O4_MINI) == Decimal("0.0058410000")
    # A reasoning rate of its own, when the price has one: 162 x 4.40 + 1024 x 8
    priced = replace(O4_MINI, reasoning_per_mtok=Decimal("8"))
    assert _call_cost(usage, priced) == Decimal("0.0095274000")


def test_openai_audio_tokens_at_their_rates():
    """gpt-4o-audio-preview list prices: text $2.50 / $10, audio $40 / $80."""
    price = _price(input_per_mtok="2.50", output_per_mtok="10", audio_input_per_mtok="40",
                   audio_output_per_mtok="80")
    usage = usage_from_openai({
        "prompt_tokens": 1200, "completion_tokens": 900,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 800}})
    # 200 x 2.50 + 1000 x 40 + 100 x 10 + 800 x 80
    assert _call_cost(usage, price) == Decimal("0.1055000000")


def test_deepseek_cache_hits():
    """DeepSeek's usage shape (`prompt_cache_hit_tokens` / `_miss_tokens`) at deepseek-chat
    (V3.2) list prices: $0.28 miss, $0.028 hit, $0.42 out."""
    price = _price(input_per_mtok="0.28", output_per_mtok="0.42", cached_input_per_mtok="0.028")
    usage = usage_from_openai({"prompt_tokens": 1940, "completion_tokens": 305,
                               "total_tokens": 2245, "prompt_cache_hit_tokens": 1920,
                               "prompt_cache_miss_tokens": 20})
    # 20 x 0.28 + 1920 x 0.028 + 305 x 0.42 = 187.46 micro-dollars
    assert _call_cost(usage, price) == Decimal("0.0001874600")


def test_long_context_tier_bills_the_whole_request_at_its_rates():
    """Sonnet 4.5 above 200k input tokens (cache reads and writes count): every class at the
    long-context rates; at exactly 200k, the base rates."""
    above = usage_from_anthropic({"input_tokens": 10_000, "cache_read_input_tokens": 200_000,
                                  "cache_creation_input_tokens": 40_000, "output_tokens": 1000})
    # 10k x 6 + 200k x 0.60 + 40k x 7.50 + 1k x 22.50
    assert _call_cost(above, SONNET_45) == Decimal("0.5025000000")
    at = usage_from_anthropic({"input_tokens": 0, "cache_read_input_tokens": 200_000,
                               "output_tokens": 1000})
    # 200k x 0.30 + 1k x 15
    assert _call_cost(at, SONNET_45) == Decimal("0.0750000000")


def test_gemini_long_context_tier_through_the_openai_dialect():
    """Gemini 2.5 Pro list prices: $1.25 / $10 up to 200k prompt tokens, $2.50 / $15 above;
    cached $0.125 / $0.25. Null tier cache rate: the tier's input rate."""
    price = _price(input_per_mtok="1.25", output_per_mtok="10", cached_input_per_mtok="0.125",
                   long_context_threshold=200_000, long_context_input_per_mtok="2.50",
                   long_context_output_per_mtok="15", long_context_cached_input_per_mtok="0.25")
    usage = usage_from_openai({"prompt_tokens": 250_000, "completion_tokens": 2000,
                               "prompt_tokens_details": {"cached_tokens": 50_000},
                               "completion_tokens_details": {"reasoning_tokens": 1500}})
    # 200k x 2.50 + 50k x 0.25 + 2000 x 15 (reasoning at the tier's output rate)
    assert _call_cost(usage, price) == Decimal("0.5425000000")
    without_cache_rate = replace(price, long_context_cached_input_per_mtok=None)
    # 200k x 2.50 + 50k x 2.50 + 2000 x 15
    assert _call_cost(usage, without_cache_rate) == Decimal("0.6550000000")


@pytest.mark.parametrize("counts", [
    {"input_tokens": 10, "output_tokens": 5, "cached_tokens": 50},
    {"input_tokens": 10, "output_tokens": 5, "cache_write_1h_tokens": 50, "reasoning_tokens": 9},
    {"input_tokens": -10, "output_tokens": -5},
])
def test_inconsistent_counts_never_bill_a_token_twice_or_go_negative(counts):
    cost = cost_usd(price=SONNET_45, **counts)
    assert Decimal(0) <= cost <= (max(0, counts["input_tokens"]) * Decimal("6")
                                  + max(0, counts["output_tokens"]) * 15) / 1_000_000
