"""Cost of a request in USD, as Decimal, from the price version in force and its tokens per class.

Token counts follow the IR (gateway.types.Usage): `input_tokens` includes the cache reads, the
cache writes and the audio and image input; `output_tokens` includes the reasoning and the audio
and image output. Each class is billed at its own rate; a null rate falls back:

| class | rate | null rate falls back to |
|---|---|---|
| input (the rest of `input_tokens`) | `input_per_mtok` | - |
| cache read | `cached_input_per_mtok` | input |
| cache write 5 min | `cache_write_5m_per_mtok` | input |
| cache write 1 h | `cache_write_1h_per_mtok` | input |
| audio / image input | `audio_input_per_mtok`, `image_input_per_mtok` | input |
| output (the rest of `output_tokens`) | `output_per_mtok` | - |
| reasoning | `reasoning_per_mtok` | output |
| audio / image output | `audio_output_per_mtok`, `image_output_per_mtok` | output |

Long context: when the price has `long_context_threshold` and `input_tokens` exceeds it, the
whole request is billed at the `long_context_*` rates (Gemini 2.5 Pro and Claude Sonnet 4/4.5
above 200k). There, a null tier input or output rate falls back to the base one; null tier cache
rates to the tier's input rate; reasoning is billed at the tier's output rate; audio and image
keep their base rates.

Counts larger than what contains them (cache reads above `input_tokens`) are cut to fit, class
by class in the table's order, so a cost is never negative and never bills a token twice. The
sum is rounded once, to the ledger's quantum (1e-10 USD), half-even.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from providers.selectors import PriceInfo

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.0000000001")

# The ledger's token columns (usage.models.UsageRecord), which are also cost_usd's arguments.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens", "reasoning_tokens", "audio_input_tokens",
                "audio_output_tokens", "image_input_tokens", "image_output_tokens")


@dataclass(frozen=True, slots=True)
class CostItem:
    """One token class of a bill: `tokens` at `rate_per_mtok`."""
    token_class: str
    tokens: int
    rate_per_mtok: Decimal

    @property
    def amount(self) -> Decimal:
        return self.tokens * self.rate_per_mtok / MILLION


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate


def _parts(total: int, parts: list[int]) -> tuple[int, list[int]]:
    """`parts` cut to fit in `total` one after another, and what is left of `total`."""
    left = max(0, total)
    out = []
    for part in parts:
        part = min(max(0, part), left)
        out.append(part)
        left -= part
    return left, out


def cost_items(*, price: PriceInfo, input_tokens: int, output_tokens: int,
               cached_tokens: int = 0, cache_write_5m_tokens: int = 0,
               cache_write_1h_tokens: int = 0, reasoning_tokens: int = 0,
               audio_input_tokens: int = 0, audio_output_tokens: int = 0,
               image_input_tokens: int = 0, image_output_tokens: int = 0) -> list[CostItem]:
    """The bill of one request, one item per token class (zero counts included), at the rates
    the module docstring states."""
    p = price
    inp, out = p.input_per_mtok, p.output_per_mtok
    cached = _or(p.cached_input_per_mtok, inp)
    write_5m = _or(p.cache_write_5m_per_mtok, inp)
    write_1h = _or(p.cache_write_1h_per_mtok, inp)
    reasoning = _or(p.reasoning_per_mtok, out)
    if p.long_context_threshold is not None and input_tokens > p.long_context_threshold:
        inp = _or(p.long_context_input_per_mtok, inp)
        out = _or(p.long_context_output_per_mtok, out)
        cached = _or(p.long_context_cached_input_per_mtok, inp)
        write_5m = _or(p.long_context_cache_write_5m_per_mtok, inp)
        write_1h = _or(p.long_context_cache_write_1h_per_mtok, inp)
        reasoning = out
    fresh, (c_read, c_5m, c_1h, a_in, i_in) = _parts(
        input_tokens, [cached_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
                       audio_input_tokens, image_input_tokens])
    text_out, (r_out, a_out, i_out) = _parts(
        output_tokens, [reasoning_tokens, audio_output_tokens, image_output_tokens])
    return [
        CostItem("input", fresh, inp),
        CostItem("cache_read", c_read, cached),
        CostItem("cache_write_5m", c_5m, write_5m),
        CostItem("cache_write_1h", c_1h, write_1h),
        CostItem("audio_input", a_in, _or(p.audio_input_per_mtok, p.input_per_mtok)),
        CostItem("image_input", i_in, _or(p.image_input_per_mtok, p.input_per_mtok)),
        CostItem("output", text_out, out),
        CostItem("reasoning", r_out, reasoning),
        CostItem("audio_output", a_out, _or(p.audio_output_per_mtok, p.output_per_mtok)),
        CostItem("image_output", i_out, _or(p.image_output_per_mtok, p.output_per_mtok)),
    ]


def cost_usd(*, price: PriceInfo | None, input_tokens: int, output_tokens: int,
             **classes: int) -> Decimal:
    """What a request costs: the sum of `cost_items` (same arguments), rounded once to the
    ledger's quantum. No price: zero (the caller decides if that is allowed)."""
    if price is None:
        return Decimal(0)
    items = cost_items(price=price, input_tokens=input_tokens, output_tokens=output_tokens,
                       **classes)
    return sum((item.amount for item in items), Decimal(0)).quantize(COST_QUANTUM)
