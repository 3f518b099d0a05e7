"""Reads of the routing configuration.

`routing_snapshot_load` builds the immutable snapshot every proxy request is served from
(deployments, prices); `providers.cache` holds one per process and reloads it when
`config_version_get` changes. API keys are not in it: `api_key_active_get` reads one key by
digest when a request brings it, and `key_changes_since` reads the key change feed that tells
a process which cached keys to drop (issue 18: with 100,000 keys in the snapshot, every change
cost each process a 2.3-2.6 s reload and 130 MB).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from django.db.models import Case, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from gateway.routing import Candidate
from gateway.types import CodecOptions
from providers.crypto import SecretUnreadable, secret_decrypt
from providers.models import (PRICE_OPTIONAL_FIELDS, ApiKey, BudgetPeriod, ConfigVersion,
                              KeyChange, ModelRoute, Price)
from providers.capabilities import route_capabilities
from usage.budgets import period_bounds
from usage.models import BudgetCounter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to serve a public model: a provider's upstream model, with its routing knobs."""

    route_id: int
    provider_id: int
    provider_name: str
    kind: str
    base_url: str
    upstream_model: str
    weight: int
    priority: int
    timeout_s: float
    max_inflight: int
    candidate: Candidate
    codec_options: CodecOptions = field(default_factory=CodecOptions)
    extra_headers: tuple[tuple[str, str], ...] = ()
    api_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    team_id: int | None
    team_name: str | None
    allowed_models: frozenset[str]
    budget_usd: Decimal | None
    budget_period: str
    team_budget_usd: Decimal | None
    team_budget_period: str
    rpm_limit: int | None
    tpm_limit: int | None
    max_tokens_default: int | None
    # When this secret stops working: the key's expiry or, for a rotated-out secret, the end
    # of its grace period, whichever comes first. None: never.
    expires_at: datetime | None = None

    def may_use(self, public_model: str) -> bool:
        return not self.allowed_models or public_model in self.allowed_models

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class PriceInfo:
    """One price version (providers.models.Price); usage.pricing bills with it."""
    id: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    effective_from: datetime
    cache_write_5m_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    audio_input_per_mtok: Decimal | None = None
    audio_output_per_mtok: Decimal | None = None
    image_input_per_mtok: Decimal | None = None
    image_output_per_mtok: Decimal | None = None
    long_context_threshold: int | None = None
    long_context_input_per_mtok: Decimal | None = None
    long_context_output_per_mtok: Decimal | None = None
    long_context_cached_input_per_mtok: Decimal | None = None
    long_context_cache_write_5m_per_mtok: Decimal | None = None
    long_context_cache_write_1h_per_mtok: Decimal | None = None


def price_info(price: Price) -> PriceInfo:
    """The snapshot's copy of a price version."""
    return PriceInfo(id=price.id, input_per_mtok=price.input_per_mtok,
                     output_per_mtok=price.output_per_mtok, effective_from=price.effective_from,
                     **{name: getattr(price, name) for name in PRICE_OPTIONAL_FIELDS})


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    version: str | None
    deployments: dict[str, tuple[Deployment, ...]]
    # (provider id or None, upstream model) -> prices, newest effective_from first
    prices: dict[tuple[int | None, str], tuple[PriceInfo, ...]]

    def price_for(self, *, provider_id: int, upstream_model: str, at: datetime) -> PriceInfo | None:
        """The price in force at `at`: provider-specific first, then the generic one."""
        for scope in (provider_id, None):
            for price in self.prices.get((scope, upstream_model), ()):
                if price.effective_from <= at:
                    return price
        return None

    def public_models(self) -> list[str]:
        return sorted(self.deployments)


def public_models_served() -> list[str]:
    """The public model names an enabled route of an enabled provider serves now, sorted."""
    return sorted(set(ModelRoute.objects.enabled().values_list("public_model", flat=True)))


def route_shares_annotate(routes: QuerySet) -> QuerySet:
    """Routes annotated with `tier_weight`: the sum of the effective weights of the served
    routes (route and provider enabled) of the same public model at the same effective
    priority, in the same query. Weighted round-robin gives a served route weight /
    tier_weight of its tier's requests; a higher priority is a fallback tier, used only when
    the lower ones fail."""
    tier = (ModelRoute.objects.enabled()
            .annotate(w=Coalesce("weight", "provider__weight"),
                      p=Coalesce("priority", "provider__priority"))
            .filter(public_model=OuterRef("public_model"), p=OuterRef("tier_priority"))
            .order_by().values("public_model").annotate(total=Sum("w")).values("total"))
    return (routes.annotate(tier_priority=Coalesce("priority", "provider__priority"))
            .annotate(tier_weight=Subquery(tier[:1])))


def budget_spent_units(*, scope: str, now: datetime) -> Subquery:
    """For a queryset of keys (`scope` "key") or teams ("team"): the units spent in the current
    period of each row's own `budget_period`, from the budget counters (one correlated index
    seek per row, in the same query; null when the period has no counter yet)."""
    start = Case(*(When(period=period, then=Value(period_bounds(period, now)[0]))
                   for period in BudgetPeriod.values))
    counters = BudgetCounter.objects.filter(scope=scope, scope_id=OuterRef("pk"),
                                            period=OuterRef("budget_period"), period_start=start)
    return Subquery(counters.values("spent_units")[:1])


def config_version_get() -> str | None:
    return ConfigVersion.objects.values_list("token", flat=True).first()


def api_key_active_get(*, key_hash: str) -> KeyInfo | None:
    """The unrevoked, unexpired key with this digest, read now (one query on the indexed
    `key_hash` and `previous_key_hash`); None when there is none. A rotated-out secret is
    found until its grace ends."""
    now = timezone.now()
    key = (ApiKey.objects.active().select_related("team")
           .filter(Q(key_hash=key_hash)
                   | Q(previous_key_hash=key_hash, previous_key_expires_at__gt=now))
           .exclude(expires_at__lte=now).first())
    if key is None:
        return None
    return _key_info(key) if key.key_hash == key_hash else _previous_key_info(key)


@dataclass(frozen=True, slots=True)
class KeyChangeInfo:
    """One row of the key change feed: drop these digests, and every key of `team_id`."""
    id: int
    digests: tuple[str, ...]
    team_id: int | None = None


def key_changes_since(*, after: int | None, overlap: int = 0,
                      limit: int = 10_000) -> tuple[int, list[KeyChangeInfo]]:
    """(the newest id read, the changes with an id above `after - overlap`, oldest first, at
    most `limit`). With `after` None: the feed's newest id and no changes (where a process
    starts reading). One query on the primary key; a second one, for the newest id, only when
    no row is above `after - overlap`. A newest id below `after` means the feed was emptied,
    pruned past `after` or restored: what a process cached can no longer be checked."""
    if after is not None:
        rows = list(KeyChange.objects.filter(id__gt=after - overlap).order_by("id")
                    .values_list("id", "digests", "team_id")[:limit])
        if rows:
            return rows[-1][0], [
                KeyChangeInfo(id=pk, digests=tuple(digests or ()), team_id=team_id)
                for pk, digests, team_id in rows]
    return KeyChange.objects.order_by("-id").values_list("id", flat=True).first() or 0, []


def _previous_key_info(key: ApiKey) -> KeyInfo:
    """The key as its rotated-out secret sees it: valid until the grace ends (or the key
    expires, if sooner)."""
    ends = [t for t in (key.expires_at, key.previous_key_expires_at) if t is not None]
    return replace(_key_info(key), expires_at=min(ends))


def _key_info(key: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        team_id=key.team_id,
        team_name=key.team.name if key.team_id else None,
        allowed_models=frozenset(key.allowed_models or ()),
        budget_usd=key.budget_usd,
        budget_period=key.budget_period,
        team_budget_usd=key.team.budget_usd if key.team_id else None,
        team_budget_period=key.team.budget_period if key.team_id else "month",
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        max_tokens_default=key.max_tokens_default,
        expires_at=key.expires_at,
    )


def routing_snapshot_load() -> RoutingSnapshot:
    """Everything the proxy needs but the keys, read in a handful of queries. Version read
    first, so a concurrent write can only make the snapshot look older than it is (and be
    reloaded)."""
    version = config_version_get()
    deployments: dict[str, list[Deployment]] = {}
    routes = ModelRoute.objects.enabled().select_related("provider").order_by("id")
    for route in routes:
        provider = route.provider
        try:
            api_key = secret_decrypt(provider.api_key_encrypted)
        except SecretUnreadable:
            logger.error("provider %s: secret unreadable with the configured keys; route skipped",
                         provider.name)
            continue
        # The route's kind and codec options, its capabilities resolved (route, provider,
        # catalog, default) once per snapshot: codecs read only CodecOptions.
        capabilities = route_capabilities(route)
        deployments.setdefault(route.public_model, []).append(Deployment(
            route_id=route.id,
            provider_id=provider.id,
            provider_name=provider.name,
            kind=capabilities.kind,
            base_url=provider.base_url.rstrip("/"),
            upstream_model=route.upstream_model,
            weight=route.effective_weight,
            priority=route.effective_priority,
            timeout_s=provider.timeout_s,
            max_inflight=provider.max_inflight,
            candidate=Candidate(
                route_id=route.id, provider_id=provider.id, weight=route.effective_weight,
                priority=route.effective_priority, max_inflight=provider.max_inflight,
                failure_threshold=provider.breaker_failures, cooldown_s=provider.breaker_cooldown_s,
                max_cooldown_s=max(300.0, provider.breaker_cooldown_s * 8)),
            codec_options=capabilities.codec_options,
            extra_headers=tuple((str(k), str(v)) for k, v in (provider.extra_headers or {}).items()),
            api_key=api_key,
        ))

    prices: dict[tuple[int | None, str], list[PriceInfo]] = {}
    for price in Price.objects.order_by("-effective_from", "-id"):
        prices.setdefault((price.provider_id, price.upstream_model), []).append(price_info(price))

    return RoutingSnapshot(
        version=version,
        deployments={name: tuple(d) for name, d in deployments.items()},
        prices={k: tuple(v) for k, v in prices.items()},
    )
