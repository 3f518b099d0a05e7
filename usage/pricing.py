"""Cost of a request in USD, as Decimal, from the price in force."""
from decimal import Decimal

from providers.selectors import PriceInfo

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.0000000001")


def cost_usd(*, price: PriceInfo | None, input_tokens: int, output_tokens: int,
             cached_tokens: int = 0) -> Decimal:
    """`input_tokens` includes cached ones; cached tokens are billed at the cached rate when the
    price has one, else at the input rate. No price: zero (the caller decides if that is allowed)."""
    if price is None:
        return Decimal(0)
    cached = min(cached_tokens, input_tokens)
    cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    total = ((input_tokens - cached) * price.input_per_mtok + cached * cached_rate
             + output_tokens * price.output_per_mtok) / MILLION
    return total.quantize(COST_QUANTUM)
