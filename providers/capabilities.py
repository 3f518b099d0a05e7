"""What a route's upstream model can do, resolved once per routing snapshot into the codec
options of its deployment (issue 16: reasoning only where the route can reason).

Three capabilities, each resolved in this order, the first answer wins:

- `reasoning`: the route's; the provider's `translation.reasoning` (a `thinking_effort_map`
  implies true); the catalog, then the family table (`_FAMILIES`); the kind's default
  (Anthropic's Messages API and Gemini: true; other kinds: unknown).
- `max_output_tokens`: the route's; the provider's `translation.max_output_tokens`; the
  catalog (the model's context window); none.
- `responses_api`: the route's; the provider's `translation.responses_api`; false.

The price catalog (`genai-prices`, the bundled snapshot `providers.catalog` reads) has no
field for reasoning or for a model's output limit. What it does carry and is used here: a
model priced with a separate reasoning-output rate (`output_reasoning_mtok`) reasons, and no
request can ask for more output than the model's `context_window`, so that is the route's
output limit when nothing closer is known (an upper bound: the real limit is often lower, and
an admin sets it per route or provider). For reasoning it knows almost nothing (two models), so
`_FAMILIES` below, a small table of model-name families, says which models take a reasoning
effort and which refuse one; a model in neither stays unknown (None: only an effort the client
named in OpenAI's own words is sent, see `CodecOptions`).

The catalog's data (the package's `data` module) is loaded once per process, at its first
routing snapshot: measured 0.6-1.6 s and 31 MB of resident memory on the development machine;
each model's answer is then cached (500 lookups of new names: 0.09 s).

`responses_api` matters only for a kind with a Responses variant (gateway.dialects
`responses_kind`: OpenAI-compatible, Azure OpenAI); elsewhere a route may not set it
(`route_capabilities_problem`).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

from genai_prices import data_snapshot, types

from gateway.dialects import DIALECTS, dialect_for
from gateway.types import CodecOptions
from providers.catalog import catalog_provider_id
from providers.translation import codec_options, upstream_kind

T = TypeVar("T")
Source = Literal["route", "provider", "catalog", "model family", "default"]

# Model-name families (matched on the name without a vendor path or Bedrock prefix, from its
# start), in order, first match wins: True takes `reasoning_effort` / thinking, False refuses
# it. Sources: the vendors' model pages (OpenAI's o-series and GPT-5 reasoning models, gpt-oss;
# GPT-5's chat variants, GPT-4o, 4.1 and 3.5 take no effort; Anthropic's extended-thinking
# models from Claude 3.7, and the Claude 3 and 3.5 models without it). Left out on purpose:
# models that reason but refuse or ignore `reasoning_effort` (DeepSeek's reasoner, Grok 4),
# which stay unknown.
_FAMILIES: tuple[tuple[re.Pattern[str], bool], ...] = tuple(
    (re.compile(pattern), reasons) for pattern, reasons in (
        (r"gpt-5(\.\d+)?-chat", False),
        (r"o[134](-|$)", True),
        (r"gpt-5", True),
        (r"gpt-oss", True),
        (r"gpt-(4o|4\.1|4-turbo|4(-|$)|3\.5)", False),
        (r"claude-3-7", True),
        (r"claude-(opus|sonnet|haiku)-[4-9]", True),
        (r"claude-[4-9]", True),
        (r"claude-(3-5-|3-)(haiku|sonnet|opus)|claude-(instant|2)", False),
    ))
# Bedrock's model ids: an optional cross-region prefix and the vendor ("us.anthropic.claude-…").
_BEDROCK_PREFIX = re.compile(r"([a-z]{2,4}\.)?(anthropic|amazon|meta|mistral|cohere|ai21|deepseek|"
                             r"openai|qwen|writer)\.")


@dataclass(frozen=True, slots=True)
class Resolved(Generic[T]):
    """One capability's value, and which setting gave it."""
    value: T
    source: Source


@dataclass(frozen=True, slots=True)
class RouteCapabilities:
    """A route's resolved capabilities: the kind it speaks, its codec options (built from
    them) and, for the admin, each capability with where it came from."""
    kind: str
    codec_options: CodecOptions
    reasoning: Resolved[bool | None]
    max_output_tokens: Resolved[int | None]
    responses_api: Resolved[bool]


@dataclass(frozen=True, slots=True)
class ModelKnowledge:
    """What is known of an upstream model outside the gateway's settings."""
    reasoning: Resolved[bool | None] | None = None
    max_output_tokens: int | None = None


def route_capabilities_resolve(*, kind: str, base_url: str, translation: dict,
                               upstream_model: str, reasoning: bool | None = None,
                               max_output_tokens: int | None = None,
                               responses_api: bool | None = None) -> RouteCapabilities:
    """The capabilities of a route of a provider of `kind` at `base_url` with these
    `translation` settings, serving `upstream_model`, given the route's own (None: not set),
    in the order of the module's table. Pure but for the bundled catalog read (cached)."""
    translation = translation or {}
    responses = _first(responses_api, translation.get("responses_api"), default=False)
    effective = {**translation, "responses_api": responses.value}
    if not responses.value:
        effective.pop("responses_api")
    speaks = upstream_kind(kind=kind, translation=effective, upstream_model=upstream_model)
    options = codec_options(kind=kind, translation=effective, upstream_model=upstream_model)
    known = model_knowledge(kind=kind, base_url=base_url, upstream_model=upstream_model)

    provider_reasons = ("reasoning" in translation or "thinking_effort_map" in translation)
    if reasoning is not None:
        reasons: Resolved[bool | None] = Resolved(reasoning, "route")
    elif provider_reasons:
        reasons = Resolved(options.reasoning, "provider")
    elif known.reasoning is not None:
        reasons = known.reasoning
    else:
        reasons = Resolved(dialect_for(speaks).reasoning, "default")

    limit: Resolved[int | None] = _first(max_output_tokens, translation.get("max_output_tokens"),
                                         default=None)
    if limit.source == "default" and known.max_output_tokens is not None:
        limit = Resolved(known.max_output_tokens, "catalog")

    return RouteCapabilities(
        kind=speaks,
        codec_options=replace(options, reasoning=reasons.value, max_output_tokens=limit.value),
        reasoning=reasons, max_output_tokens=limit, responses_api=responses)


def route_capabilities(route) -> RouteCapabilities:
    """`route_capabilities_resolve` for a ModelRoute (its provider loaded)."""
    provider = route.provider
    return route_capabilities_resolve(
        kind=provider.kind, base_url=provider.base_url, translation=provider.translation or {},
        upstream_model=route.upstream_model, reasoning=route.reasoning,
        max_output_tokens=route.max_output_tokens, responses_api=route.responses_api)


def route_capabilities_problem(*, kind: str, responses_api: bool | None) -> str | None:
    """What is wrong with a route's capabilities for a provider of `kind`, or None."""
    if responses_api is not None and kind in DIALECTS and DIALECTS[kind].responses_kind is None:
        kinds = [k for k, d in DIALECTS.items() if d.responses_kind is not None]
        return f"responses_api: only for kind {' or '.join(kinds)}"
    return None


def model_knowledge(*, kind: str, base_url: str, upstream_model: str) -> ModelKnowledge:
    """What the catalog (for the catalog provider of this kind and base URL) and the family
    table say of `upstream_model`."""
    provider_id = catalog_provider_id(kind=kind, base_url=base_url)
    model = _catalog_model(provider_id, upstream_model) if provider_id else None
    reasoning: Resolved[bool | None] | None = None
    if model is not None and _prices_reasoning(model):
        reasoning = Resolved(True, "catalog")
    elif (family := reasoning_family(upstream_model)) is not None:
        reasoning = Resolved(family, "model family")
    return ModelKnowledge(reasoning=reasoning,
                          max_output_tokens=model.context_window if model is not None else None)


def reasoning_family(upstream_model: str) -> bool | None:
    """Whether the family table says `upstream_model` reasons (None: not in the table)."""
    name = upstream_model.lower().rsplit("/", 1)[-1]
    name = _BEDROCK_PREFIX.sub("", name, count=1) if _BEDROCK_PREFIX.match(name) else name
    for pattern, reasons in _FAMILIES:
        if pattern.match(name):
            return reasons
    return None


def _first(route_value: T | None, provider_value: T | None, *, default: T) -> Resolved[T]:
    if route_value is not None:
        return Resolved(route_value, "route")
    if provider_value is not None:
        return Resolved(provider_value, "provider")
    return Resolved(default, "default")


@functools.lru_cache(maxsize=4096)
def _catalog_model(provider_id: str, upstream_model: str) -> types.ModelInfo | None:
    # The bundled snapshot only, as providers.catalog: never what UpdatePrices fetched.
    try:
        return data_snapshot._bundled_snapshot().find_provider_model(
            upstream_model, None, provider_id, None)[1]
    except LookupError:
        return None


def _prices_reasoning(model: types.ModelInfo) -> bool:
    prices = ([model.prices] if isinstance(model.prices, types.ModelPrice)
              else [c.prices for c in model.prices])
    return any(getattr(p, "output_reasoning_mtok", None) is not None for p in prices)
