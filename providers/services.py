"""Writes to the routing configuration. A write of routes, providers, prices or tasks bumps the
config version on commit, so running servers reload their routing snapshot within ~1 s; a key
change (a key created, edited, revoked or rotated, a team's limits) is published for those keys
only (`api_key_changes_publish`), which costs each server a few dictionary operations
(providers.cache)."""
from __future__ import annotations

import functools
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway.dialects import MOCK_KIND
from providers.catalog import CatalogMissing, CatalogPrice, catalog_price
from providers.config_file import (ConfigError, ConfigSpec, PriceSpec, ProviderSpec,
                                   SectionResult, config_sections)
from providers.crypto import secret_encrypt, secret_rotate
from providers.key_events import key_change_broadcast
from providers.keys import api_key_generate, api_key_hash, api_key_prefix
from providers.models import (
    ApiKey, AuditAction, AuditLog, ConfigVersion, KeyChange, ModelRoute, Price, PriceSource,
    Provider, Team,
)
from providers.selectors import KeyChangeInfo

# Every this many feed rows, the writer also deletes the rows past their retention.
KEY_FEED_PRUNE_EVERY = 100


def config_version_bump() -> None:
    """Mark the config as changed once the surrounding transaction commits."""
    def bump() -> None:
        token = uuid.uuid4().hex
        updated = ConfigVersion.objects.filter(pk=1).update(token=token, updated_at=timezone.now())
        if not updated:
            ConfigVersion.objects.update_or_create(pk=1, defaults={"token": token})
    transaction.on_commit(bump)


@dataclass(frozen=True)
class ApplyResult:
    providers_created: int = 0
    providers_updated: int = 0
    providers_deleted: int = 0
    routes_written: int = 0
    routes_deleted: int = 0
    prices_added: int = 0
    # Other apps' sections of the file (`tasks`), by name: every declared one, zero if absent.
    sections: dict[str, SectionResult] = field(default_factory=dict)


@transaction.atomic
def config_apply(*, spec: ConfigSpec, prune: bool = False, actor: str = "gateway_apply") -> ApplyResult:
    """Upsert providers (by name), their model routes and prices, then the other apps' sections
    the file has (`tasks`, by slug: tasks.services.tasks_apply), all in one transaction. A
    provider's `models` map is authoritative for that provider's routes. With `prune`,
    providers absent from the file are deleted (with their routes), and so are a section's
    entries when the file has that section. Prices are versioned: a changed price is a new
    row. Raises ConfigError for a reference the database does not hold (provider, team).
    Changes to providers, routes and prices are written to the audit log under `actor`."""
    created = updated = routes_written = routes_deleted = prices_added = 0
    for p in spec.providers:
        provider, was_created = _provider_upsert(p, actor=actor)
        created += was_created
        updated += not was_created
        existing = {r.public_model: audit_state(r) for r in ModelRoute.objects.filter(provider=provider)}
        keep = []
        for r in p.routes:
            route, route_created = ModelRoute.objects.update_or_create(
                provider=provider, public_model=r.public_model,
                defaults={"upstream_model": r.upstream_model, "weight": r.weight,
                          "priority": r.priority, "reasoning": r.reasoning,
                          "max_output_tokens": r.max_output_tokens,
                          "responses_api": r.responses_api, "enabled": True},
            )
            audit_log_write(obj=route, action=AuditAction.ADD if route_created else AuditAction.CHANGE,
                            before=existing.get(r.public_model), after=audit_state(route), actor=actor)
            keep.append(route.pk)
            routes_written += 1
        stale_routes = ModelRoute.objects.filter(provider=provider).exclude(pk__in=keep)
        for route in stale_routes:
            audit_log_write(obj=route, action=AuditAction.DELETE, before=audit_state(route),
                            after=None, actor=actor)
        routes_deleted += stale_routes.delete()[0]

    deleted = 0
    if prune:
        stale = Provider.objects.exclude(name__in=[p.name for p in spec.providers])
        routes_deleted += ModelRoute.objects.filter(provider__in=stale).count()
        deleted = stale.count()
        for obj in [*ModelRoute.objects.filter(provider__in=stale),
                    *Price.objects.filter(provider__in=stale), *stale]:
            audit_log_write(obj=obj, action=AuditAction.DELETE, before=audit_state(obj), after=None,
                            actor=actor)
        Price.objects.filter(provider__in=stale).delete()
        stale.delete()

    for price in spec.prices:
        prices_added += _price_add_if_changed(price, actor=actor)

    declared = config_sections()
    sections = {name: SectionResult() for name in declared}
    for name, specs in spec.sections.items():
        sections[name] = declared[name].apply(specs, prune=prune)

    config_version_bump()
    return ApplyResult(providers_created=created, providers_updated=updated,
                       providers_deleted=deleted, routes_written=routes_written,
                       routes_deleted=routes_deleted, prices_added=prices_added,
                       sections=sections)


def _provider_upsert(p: ProviderSpec, *, actor: str) -> tuple[Provider, bool]:
    provider = Provider.objects.filter(name=p.name).first()
    created = provider is None
    before = None if created else audit_state(provider)
    provider = provider or Provider(name=p.name)
    provider.kind = p.kind
    provider.base_url = p.base_url
    provider.weight = p.weight
    provider.priority = p.priority
    provider.enabled = p.enabled
    provider.timeout_s = p.timeout_s
    provider.max_inflight = p.max_inflight
    provider.extra_headers = p.extra_headers
    provider.translation = p.translation
    if p.api_key is not None:
        provider.api_key_encrypted = secret_encrypt(p.api_key)
    provider.save()
    audit_log_write(obj=provider, action=AuditAction.ADD if created else AuditAction.CHANGE,
                    before=before, after=audit_state(provider), actor=actor)
    return provider, created


def _price_add_if_changed(p: PriceSpec, *, actor: str) -> int:
    provider = None
    if p.provider is not None:
        provider = Provider.objects.filter(name=p.provider).first()
        if provider is None:
            raise ConfigError(f"prices: model {p.upstream_model}: unknown provider {p.provider!r}")
    now = timezone.now()
    current = (Price.objects.filter(upstream_model=p.upstream_model, provider=provider,
                                    effective_from__lte=p.effective_from or now)
               .order_by("-effective_from", "-id").first())
    rates = p.price_fields()
    if current and all(getattr(current, name) == value for name, value in rates.items()):
        return 0
    price = Price.objects.create(upstream_model=p.upstream_model, provider=provider,
                                 effective_from=p.effective_from or now,
                                 source=PriceSource.CONFIG, **rates)
    audit_log_write(obj=price, action=AuditAction.ADD, before=None, after=audit_state(price),
                    actor=actor)
    return 1


# --- Price catalog ------------------------------------------------------------------------------

class PriceSyncOutcome(StrEnum):
    ADDED = "added"
    WOULD_ADD = "would add"  # --dry-run
    UNCHANGED = "unchanged"
    ADMIN_PRICE = "admin price kept"
    MISSING = "not in catalog"


@dataclass(frozen=True)
class PriceSyncItem:
    """What prices_sync did (or would do) for one upstream model of one provider."""

    provider: str
    upstream_model: str
    outcome: PriceSyncOutcome
    # The fields that differ, why the catalog has no price, or which admin price was kept.
    detail: str = ""
    catalog: CatalogPrice | None = None
    added: Price | None = None


def price_in_force(*, provider: Provider, upstream_model: str, at: datetime) -> Price | None:
    """The version billing uses for `upstream_model` at `provider` on `at` (as
    RoutingSnapshot.price_for): the provider's own, else the generic one."""
    rows = (Price.objects.filter(upstream_model=upstream_model, effective_from__lte=at)
            .filter(Q(provider=provider) | Q(provider__isnull=True))
            .order_by("-effective_from", "-id"))
    own = generic = None
    for row in rows:
        if row.provider_id == provider.pk and own is None:
            own = row
        elif row.provider_id is None and generic is None:
            generic = row
    return own or generic


def _price_sync_one(*, provider: Provider, upstream_model: str, now: datetime, dry_run: bool,
                    actor: str, user) -> PriceSyncItem:
    item = functools.partial(PriceSyncItem, provider=provider.name, upstream_model=upstream_model)
    try:
        catalog = catalog_price(kind=provider.kind, base_url=provider.base_url,
                                upstream_model=upstream_model, at=now)
    except CatalogMissing as exc:
        return item(outcome=PriceSyncOutcome.MISSING, detail=str(exc))
    current = price_in_force(provider=provider, upstream_model=upstream_model, at=now)
    if current is not None and current.source != PriceSource.CATALOG:
        return item(outcome=PriceSyncOutcome.ADMIN_PRICE, catalog=catalog,
                    detail=f"{current} ({current.get_source_display()})")
    differs = catalog.differs_from(current) if current is not None else ["no price"]
    if not differs:
        return item(outcome=PriceSyncOutcome.UNCHANGED, catalog=catalog)
    detail = ", ".join(differs)
    if dry_run:
        return item(outcome=PriceSyncOutcome.WOULD_ADD, catalog=catalog, detail=detail)
    price = Price.objects.create(
        upstream_model=upstream_model, provider=provider, effective_from=now,
        source=PriceSource.CATALOG, catalog_version=catalog.version,
        catalog_date=catalog.date, **catalog.rates)
    audit_log_write(obj=price, action=AuditAction.ADD, before=None, after=audit_state(price),
                    actor=actor, user=user)
    return item(outcome=PriceSyncOutcome.ADDED, catalog=catalog, detail=detail, added=price)


@transaction.atomic
def prices_sync(*, provider: Provider | None = None, dry_run: bool = False,
                actor: str = "prices_sync", user=None,
                now: datetime | None = None) -> list[PriceSyncItem]:
    """Bring the prices of the upstream models in use up to the catalog (providers.catalog).

    In use: served by an enabled route of an enabled provider, or, with `provider`, by an
    enabled route of that provider. For each (provider, upstream model), the catalog's price is
    compared with the version in force (`price_in_force`): when that version was entered by an
    admin (the admin or the routing file), it is kept, whatever the catalog says; when there is
    none, or it came from the catalog and its rates differ, a new version of the provider's own
    is added, in force from `now`, with its provenance (source genai-prices, the catalog's
    version and date) and an audit log entry under `actor`/`user`. So a second run adds
    nothing. `dry_run`: the same answer, nothing written. Returns one item per (provider,
    upstream model), sorted by both."""
    now = now or timezone.now()
    routes = (ModelRoute.objects.enabled() if provider is None
              else ModelRoute.objects.filter(provider=provider, enabled=True))
    pairs = {(r.provider.name, r.upstream_model): r.provider
             for r in routes.select_related("provider")}
    items = [_price_sync_one(provider=pairs[key], upstream_model=key[1], now=now,
                             dry_run=dry_run, actor=actor, user=user)
             for key in sorted(pairs)]
    if any(i.outcome == PriceSyncOutcome.ADDED for i in items):
        config_version_bump()
    return items


def _env_placeholder(provider_name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider_name.upper()) + "_API_KEY"


# A route's own settings in the file, where set (None: inherited from the provider).
ROUTE_EXPORTED = ("weight", "priority", "reasoning", "max_output_tokens", "responses_api")


def config_export() -> str:
    """The current config as the YAML `config_apply` reads; secrets as `${ENV}` placeholders.
    Prices: the version in force now for each (model, provider)."""
    providers = []
    for provider in Provider.objects.prefetch_related("routes").order_by("name"):
        models = {}
        for route in sorted(provider.routes.all(), key=lambda r: r.public_model):
            entry = {"upstream": route.upstream_model}
            for name in ROUTE_EXPORTED:
                if getattr(route, name) is not None:
                    entry[name] = getattr(route, name)
            models[route.public_model] = entry if len(entry) > 1 else route.upstream_model
        item = {"name": provider.name, "kind": provider.kind}
        if provider.base_url:
            item["base_url"] = provider.base_url
        if provider.api_key_encrypted:
            item["api_key"] = "${" + _env_placeholder(provider.name) + "}"
        item.update({"weight": provider.weight, "priority": provider.priority,
                     "enabled": provider.enabled, "timeout_s": provider.timeout_s,
                     "max_inflight": provider.max_inflight})
        if provider.extra_headers:
            item["extra_headers"] = dict(provider.extra_headers)
        if provider.translation:
            item["translation"] = dict(provider.translation)
        item["models"] = models
        providers.append(item)

    prices = []
    seen = set()
    now = timezone.now()
    for price in (Price.objects.filter(effective_from__lte=now).select_related("provider")
                  .order_by("upstream_model", "provider__name", "-effective_from", "-id")):
        scope = (price.upstream_model, price.provider_id)
        if scope in seen:
            continue
        seen.add(scope)
        item = {"model": price.upstream_model}
        if price.provider_id:
            item["provider"] = price.provider.name
        item["input"] = _decimal_text(price.input_per_mtok)
        item["output"] = _decimal_text(price.output_per_mtok)
        for name in ("cached_input", "cache_write_5m", "cache_write_1h", "reasoning",
                     "audio_input", "audio_output", "image_input", "image_output"):
            rate = getattr(price, f"{name}_per_mtok")
            if rate is not None:
                item[name] = _decimal_text(rate)
        if price.long_context_threshold is not None:
            tier = {"threshold": price.long_context_threshold}
            for name in ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h"):
                rate = getattr(price, f"long_context_{name}_per_mtok")
                if rate is not None:
                    tier[name] = _decimal_text(rate)
            item["long_context"] = tier
        prices.append(item)
    document = {"providers": providers, "prices": prices}
    for name, section in config_sections().items():
        items = section.export()
        if items:
            document[name] = items
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def provider_secrets_rotate() -> int:
    """Re-encrypt every stored provider secret under the newest encryption key."""
    count = 0
    for provider in Provider.objects.exclude(api_key_encrypted=""):
        before = audit_state(provider)
        provider.api_key_encrypted = secret_rotate(provider.api_key_encrypted)
        provider.save(update_fields=["api_key_encrypted", "updated_at"])
        audit_log_write(obj=provider, action=AuditAction.CHANGE, before=before,
                        after=audit_state(provider), actor="rotate_provider_secrets")
        count += 1
    return count


def api_key_digests(key: ApiKey) -> set[str]:
    """The digests a key answers to now: its secret's and a rotated-out one's."""
    return {d for d in (key.key_hash, key.previous_key_hash) if d}


def api_key_changes_publish(*, digests: set[str] | frozenset[str] = frozenset(),
                            team: Team | None = None) -> None:
    """Tell every serving process that the keys answering to `digests` (a key's digests before
    and after the change), or every key of `team`, changed, so that each drops its cached copy
    and reads the key again on its next request (providers.cache.KeyCache). One row of the key
    change feed, in the caller's transaction, and a Redis message once it commits
    (providers.key_events). The routing snapshot is not touched. Every KEY_FEED_PRUNE_EVERY-th
    row also deletes the rows older than GATEWAY_KEY_FEED_RETENTION_S."""
    digests = sorted(d for d in digests if d)
    if not digests and team is None:
        return
    row = KeyChange.objects.create(digests=digests, team_id=team.pk if team is not None else None)
    change = KeyChangeInfo(id=row.pk, digests=tuple(digests), team_id=row.team_id)
    transaction.on_commit(lambda: key_change_broadcast(change))
    if row.pk % KEY_FEED_PRUNE_EVERY == 0:
        retention = timedelta(seconds=settings.GATEWAY_KEY_FEED_RETENTION_S)
        # Never the newest row: a feed that ends below a process's position reads as reset.
        KeyChange.objects.filter(at__lt=timezone.now() - retention, id__lt=row.pk).delete()


@transaction.atomic
def api_key_create(*, name: str, team: str | None = None, models: list[str] | None = None,
                   budget_usd: Decimal | None = None, budget_period: str = "month",
                   rpm: int | None = None, tpm: int | None = None,
                   max_tokens_default: int | None = None, expires_at: datetime | None = None,
                   actor: str = "create_api_key") -> tuple[ApiKey, str]:
    """Create a key; returns it with the raw secret, which is never stored or shown again.
    The key (and a team it creates) is written to the audit log under `actor`. From
    `expires_at` on, the key is refused (None: never)."""
    team_obj = None
    if team:
        team_obj, team_created = Team.objects.get_or_create(name=team)
        if team_created:
            audit_log_write(obj=team_obj, action=AuditAction.ADD, before=None,
                            after=audit_state(team_obj), actor=actor)
    raw = api_key_generate()
    key = ApiKey.objects.create(
        name=name, team=team_obj, prefix=api_key_prefix(raw), key_hash=api_key_hash(raw),
        allowed_models=sorted(set(models or [])), budget_usd=budget_usd,
        budget_period=budget_period, rpm_limit=rpm, tpm_limit=tpm,
        max_tokens_default=max_tokens_default, expires_at=expires_at,
    )
    audit_log_write(obj=key, action=AuditAction.ADD, before=None, after=audit_state(key), actor=actor)
    # A new digest is in no cache, but may be among a process's confirmed-unknown ones.
    api_key_changes_publish(digests=api_key_digests(key))
    return key, raw


@transaction.atomic
def api_key_rotate(*, key: ApiKey, grace: timedelta, user=None, actor: str = "") -> str:
    """Give the key a new secret and return it (never stored or shown again). The current
    secret keeps working for `grace` (none when zero), then stops; a secret rotated out
    earlier stops now: only the newest two are ever valid. Spend, limits and the ledger stay
    with the key. Logged under `user`, else `actor`. Raises ValueError for a negative grace."""
    if grace < timedelta(0):
        raise ValueError("the grace period cannot be negative")
    before = audit_state(key)
    retired = api_key_digests(key)
    raw = api_key_generate()
    if grace:
        key.previous_key_hash = key.key_hash
        key.previous_key_expires_at = timezone.now() + grace
    else:
        key.previous_key_hash, key.previous_key_expires_at = "", None
    key.key_hash, key.prefix = api_key_hash(raw), api_key_prefix(raw)
    key.save(update_fields=["key_hash", "prefix", "previous_key_hash", "previous_key_expires_at"])
    audit_log_write(obj=key, action=AuditAction.CHANGE, before=before, after=audit_state(key),
                    user=user, actor=actor)
    api_key_changes_publish(digests=retired | api_key_digests(key))
    return raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, user=None, actor: str = "") -> None:
    """Revoke a key (refused within ~1 s on every server); logged under `user`, else
    `actor`."""
    before = audit_state(key)
    key.revoked = True
    key.save(update_fields=["revoked"])
    audit_log_write(obj=key, action=AuditAction.CHANGE, before=before, after=audit_state(key),
                    user=user, actor=actor)
    api_key_changes_publish(digests=api_key_digests(key))


@dataclass(frozen=True)
class DemoSetup:
    admin_username: str
    admin_password: str | None
    api_key: str


@transaction.atomic
def demo_config_load() -> DemoSetup | None:
    """On a database with no provider: a `mock` provider behind the public model `demo`, a
    price for it, a development superuser and a demo key. Returns None when providers exist."""
    if Provider.objects.exists():
        return None
    provider = Provider.objects.create(name="mock", kind=MOCK_KIND, base_url="")
    route = ModelRoute.objects.create(public_model="demo", provider=provider, upstream_model="mock-echo")
    price = Price.objects.create(upstream_model="mock-echo", provider=None,
                                 input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"),
                                 cached_input_per_mtok=Decimal("0.075"))
    for obj in (provider, route, price):
        audit_log_write(obj=obj, action=AuditAction.ADD, before=None, after=audit_state(obj),
                        actor="gateway_demo")
    User = get_user_model()
    password = None
    if not User.objects.filter(username="admin").exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
    _, raw = api_key_create(name="demo", actor="gateway_demo")
    config_version_bump()
    return DemoSetup(admin_username="admin", admin_password=password, api_key=raw)


# --- Audit log ---------------------------------------------------------------------------------

AUDITED_TYPES = {Provider: "provider", ModelRoute: "route", Price: "price", ApiKey: "api_key",
                 Team: "team"}
# Never logged, not even masked: a key's hash identifies the secret.
_UNLOGGED_FIELDS = {"id", "key_hash", "previous_key_hash", "created_at", "updated_at"}
_SECRET = "•••"


class _Secret:
    """A secret's stored form, kept only to compare before/after; never written to the log."""

    __slots__ = ("raw",)

    def __init__(self, raw: object) -> None:
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Secret) and self.raw == other.raw

    def masked(self) -> object:
        if isinstance(self.raw, dict):
            return {str(k): _SECRET for k in self.raw}
        return "set" if self.raw else "empty"


def _url_masked(url: str) -> str:
    """`https://user:pass@host/x` -> `https://•••@host/x`; other URLs unchanged."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=_SECRET + "@" + parts.netloc.rsplit("@", 1)[1]))


def audit_state(obj) -> dict[str, object]:
    """The audited fields of a provider, route, price, key or team, JSON-safe, secrets wrapped
    (`api_key_encrypted` shows as `api_key`; extra header values and URL credentials masked)."""
    state: dict[str, object] = {}
    for f in obj._meta.concrete_fields:
        if f.name in _UNLOGGED_FIELDS:
            continue
        value = getattr(obj, f.attname)
        if f.name == "api_key_encrypted":
            state["api_key"] = _Secret(value)
        elif f.name == "extra_headers":
            state[f.name] = _Secret(dict(value or {}))
        elif f.name == "base_url":
            state[f.name] = _url_masked(value or "")
        elif isinstance(value, Decimal):
            state[f.attname] = format(value.normalize(), "f")
        elif isinstance(value, date):  # a datetime or a date
            state[f.attname] = value.isoformat()
        else:
            state[f.attname] = value
    return state


def _changes(before: dict | None, after: dict | None) -> dict[str, object]:
    """{field: [old, new]} of what differs; for an add or delete, the non-empty fields. A secret
    shows as "set"/"empty" (header names with masked values), or "changed" when only its value
    differs."""
    changes: dict[str, object] = {}
    for name in (after if after is not None else before or {}):
        old = None if before is None else before.get(name)
        new = None if after is None else after.get(name)
        if before is not None and after is not None and old == new:
            continue
        if isinstance(old, _Secret) or isinstance(new, _Secret):
            old, new = (v.masked() if isinstance(v, _Secret) else v for v in (old, new))
            if before is not None and after is not None and old == new:
                changes[name] = "changed"
                continue
        if (before is None or after is None) and (new if before is None else old) in (
                None, "", [], {}, "empty"):
            continue
        changes[name] = [old, new]
    return changes


def audit_log_write(*, obj, action: str, before: dict | None, after: dict | None,
                    actor: str = "", user=None) -> AuditLog | None:
    """Record one change of an audited object (see AUDITED_TYPES). `before`/`after` come from
    `audit_state` (None for an add / a delete). A change that changed nothing is not logged.
    `actor` defaults to the user's username. Returns the row written, if any."""
    changes = _changes(before, after)
    if action == AuditAction.CHANGE and not changes:
        return None
    return AuditLog.objects.create(
        user=user if user is not None and user.pk else None,
        actor=actor or (user.get_username() if user is not None else "system"),
        action=action, object_type=AUDITED_TYPES.get(type(obj), type(obj).__name__.lower()),
        object_id=str(obj.pk), object_repr=str(obj)[:300], changes=changes)
