"""The price catalog: list prices per upstream model from the `genai-prices` package, offline.

The catalog's data ship inside the package (pinned in requirements.txt); this module reads only
that bundled snapshot (`data_snapshot._bundled_snapshot`, not `get_snapshot`, which would
return whatever a started `genai_prices.UpdatePrices` fetched from GitHub). Nothing here, nor
anywhere in the gateway, starts `UpdatePrices`: prices never come over the network at run time.
A newer catalog is a newer pinned package.

`catalog_price` answers one upstream model of one provider as the rates of a `Price` row
(USD per million tokens, 6 decimal places, the fields of `PRICE_RATE_FIELDS`):

| catalog price key | Price field (and its `long_context_*` twin for a tiered price) |
|---|---|
| `input_mtok`, `output_mtok` | `input_per_mtok`, `output_per_mtok` |
| `cache_read_mtok` | `cached_input_per_mtok` |
| `cache_write_mtok` (Anthropic's default write, 5 minutes), `cache_write_5m_mtok` | `cache_write_5m_per_mtok` |
| `cache_write_1h_mtok` | `cache_write_1h_per_mtok` |
| `output_reasoning_mtok`, `input_audio_mtok`, `output_audio_mtok`, `input_image_mtok`, `output_image_mtok` | `reasoning_per_mtok`, `audio_*`, `image_*` (base rate only) |

A catalog class absent from the model is a null rate (it falls back as usage.pricing says);
a model without an output price (embeddings) gets output 0. A tiered catalog price ("above
200k input tokens, every token at the tier's rate") is the base rates plus one long-context
tier; a model with more than one tier cannot be stored and is reported missing. A price that
depends on the time of day (DeepSeek's off-peak discount) cannot be stored either: the catalog
price taken is the one in force for most of the day.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from genai_prices import __version__ as _genai_prices_version
from genai_prices import data_snapshot, types

from gateway.dialects import (AZURE_KIND, AZURE_RESPONSES_KIND, MOCK_KIND, RESPONSES_KIND)
from providers.models import PRICE_OPTIONAL_FIELDS
# Every rate of a Price row (and its tier threshold), as catalog_price fills them.
PRICE_RATE_FIELDS = ("input_per_mtok", "output_per_mtok", *PRICE_OPTIONAL_FIELDS)
RATE_QUANTUM = Decimal("0.000001")  # Price's decimal_places

# The catalog provider of each provider kind (gateway.dialects). An OpenAI-compatible kind at a
# base URL of its own is matched by that URL (DeepSeek, Groq, ...) and has no catalog price
# when no catalog provider claims the URL (a self-hosted server); the other kinds are their
# vendor's whatever their URL (Azure resources and Bedrock regions have URLs of their own).
_OPENAI_COMPATIBLE = {"openai", RESPONSES_KIND}
_KIND_PROVIDER = {
    "openai": "openai", RESPONSES_KIND: "openai", "anthropic": "anthropic",
    AZURE_KIND: "azure", AZURE_RESPONSES_KIND: "azure", "gemini": "google",
    "vertex": "google", "vertex_messages": "google", "bedrock": "aws",
    "bedrock_messages": "aws",
}

# catalog price key -> (Price field, its long-context field or None: base rate only)
_KEY_FIELDS = {
    "input_mtok": ("input_per_mtok", "long_context_input_per_mtok"),
    "output_mtok": ("output_per_mtok", "long_context_output_per_mtok"),
    "cache_read_mtok": ("cached_input_per_mtok", "long_context_cached_input_per_mtok"),
    "cache_write_mtok": ("cache_write_5m_per_mtok", "long_context_cache_write_5m_per_mtok"),
    # After cache_write_mtok: an explicit 5-minute rate wins over the default write rate.
    "cache_write_5m_mtok": ("cache_write_5m_per_mtok", "long_context_cache_write_5m_per_mtok"),
    "cache_write_1h_mtok": ("cache_write_1h_per_mtok", "long_context_cache_write_1h_per_mtok"),
    "output_reasoning_mtok": ("reasoning_per_mtok", None),
    "input_audio_mtok": ("audio_input_per_mtok", None),
    "output_audio_mtok": ("audio_output_per_mtok", None),
    "input_image_mtok": ("image_input_per_mtok", None),
    "output_image_mtok": ("image_output_per_mtok", None),
}


class CatalogMissing(LookupError):
    """The catalog has no price for this model of this provider that a Price row can hold; the
    message says why."""


@dataclass(frozen=True, slots=True)
class CatalogPrice:
    """A catalog price as a Price row's rates, with where it came from."""

    catalog_provider: str
    catalog_model: str
    version: str
    # The catalog's own date for these rates (the day it lists them from); None: undated.
    date: date | None
    rates: dict[str, Decimal | int | None]

    def differs_from(self, price) -> list[str]:
        """The rate fields where `price` (a Price) holds another value than the catalog."""
        return [name for name in PRICE_RATE_FIELDS if getattr(price, name) != self.rates[name]]


def catalog_version() -> str:
    return _genai_prices_version


def catalog_provider_id(*, kind: str, base_url: str) -> str | None:
    """The catalog's provider for a provider of this kind at this base URL (blank: the kind's
    default URL), or None (the mock, or an OpenAI-compatible server the catalog does not know)."""
    if kind == MOCK_KIND:
        return None
    if kind in _OPENAI_COMPATIBLE and base_url:
        for provider in _snapshot().providers:
            if re.match(provider.api_pattern, base_url):
                return provider.id
        return None
    return _KIND_PROVIDER.get(kind)


def catalog_price(*, kind: str, base_url: str, upstream_model: str, at: datetime) -> CatalogPrice:
    """The catalog's price of `upstream_model` at a provider of this kind and base URL, as in
    force on `at`'s (UTC) day. Raises CatalogMissing."""
    provider_id = catalog_provider_id(kind=kind, base_url=base_url)
    if provider_id is None:
        raise CatalogMissing(f"the catalog knows no provider for kind {kind!r}"
                             + (f" at {base_url}" if base_url else ""))
    return _catalog_price(provider_id, upstream_model, at.astimezone(UTC).date())


def _snapshot() -> data_snapshot.DataSnapshot:
    return data_snapshot._bundled_snapshot()


@functools.lru_cache(maxsize=4096)
def _catalog_price(provider_id: str, upstream_model: str, day: date) -> CatalogPrice:
    try:
        provider, model = _snapshot().find_provider_model(upstream_model, None, provider_id, None)
    except LookupError:
        raise CatalogMissing(f"{upstream_model!r} is not in the catalog of {provider_id}") from None
    model_price, price_date = _price_of_the_day(model, day)
    rates = _rates(model_price)
    if rates is None:
        raise CatalogMissing(f"{upstream_model!r} ({provider.id}/{model.id}): the catalog's "
                             "price has no input rate or more than one long-context tier")
    return CatalogPrice(catalog_provider=provider.id, catalog_model=model.id,
                        version=catalog_version(), date=price_date, rates=rates)


def _price_of_the_day(model: types.ModelInfo, day: date) -> tuple[types.ModelPrice, date | None]:
    """The model's standard price in force on `day` for the most minutes (the catalog's own
    rule, ModelInfo.get_prices: the last conditional price whose constraint holds), and the
    start date the catalog gives it."""
    if isinstance(model.prices, types.ModelPrice):
        return model.prices, None
    minutes: dict[int, int] = {}
    start = datetime.combine(day, time(0, 0), tzinfo=UTC)
    for minute in range(24 * 60):
        at = start + timedelta(minutes=minute)
        chosen = 0
        for index in range(len(model.prices) - 1, -1, -1):
            constraint = model.prices[index].constraint
            if constraint is None or constraint.active(at):
                chosen = index
                break
        minutes[chosen] = minutes.get(chosen, 0) + 1
    # Most minutes; on a tie, the later conditional (the catalog's precedence).
    chosen = max(minutes, key=lambda index: (minutes[index], index))
    conditional = model.prices[chosen]
    constraint = conditional.constraint
    return (conditional.prices,
            constraint.start_date if isinstance(constraint, types.StartDateConstraint) else None)


def _quantized(value: Decimal) -> Decimal:
    return value.quantize(RATE_QUANTUM)


def _rates(model_price: types.ModelPrice) -> dict[str, Decimal | int | None] | None:
    """A catalog price as Price's rates, or None when a Price row cannot hold it."""
    rates: dict[str, Decimal | int | None] = dict.fromkeys(PRICE_RATE_FIELDS)
    threshold: int | None = None
    for key, (field, long_field) in _KEY_FIELDS.items():
        value = getattr(model_price, key, None)
        if value is None:
            continue
        if isinstance(value, types.TieredPrices):
            rates[field] = _quantized(value.base)
            if long_field is None or not value.tiers:
                continue
            if len(value.tiers) > 1 or threshold not in (None, value.tiers[0].start):
                return None
            threshold = value.tiers[0].start
            rates[long_field] = _quantized(value.tiers[0].price)
        else:
            rates[field] = _quantized(value)
    if rates["input_per_mtok"] is None:
        return None
    if rates["output_per_mtok"] is None:
        rates["output_per_mtok"] = _quantized(Decimal(0))
    rates["long_context_threshold"] = threshold
    return rates
