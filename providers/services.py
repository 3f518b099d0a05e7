"""Writes to the routing configuration. Every write bumps the config version on commit, so
running servers pick it up within ~1 s (providers.cache)."""
from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal

import yaml
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from providers.config_file import ConfigError, ConfigSpec, PriceSpec, ProviderSpec
from providers.crypto import secret_encrypt, secret_rotate
from providers.keys import api_key_generate, api_key_hash, api_key_prefix
from providers.models import ApiKey, ConfigVersion, ModelRoute, Price, Provider, ProviderKind, Team


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


@transaction.atomic
def config_apply(*, spec: ConfigSpec, prune: bool = False) -> ApplyResult:
    """Upsert providers (by name), their model routes and prices. A provider's `models` map is
    authoritative for that provider's routes. With `prune`, providers absent from the file are
    deleted (with their routes). Prices are versioned: a changed price is a new row."""
    created = updated = routes_written = routes_deleted = prices_added = 0
    for p in spec.providers:
        provider, was_created = _provider_upsert(p)
        created += was_created
        updated += not was_created
        keep = []
        for r in p.routes:
            route, _ = ModelRoute.objects.update_or_create(
                provider=provider, public_model=r.public_model,
                defaults={"upstream_model": r.upstream_model, "weight": r.weight,
                          "priority": r.priority, "enabled": True},
            )
            keep.append(route.pk)
            routes_written += 1
        routes_deleted += ModelRoute.objects.filter(provider=provider).exclude(pk__in=keep).delete()[0]

    deleted = 0
    if prune:
        stale = Provider.objects.exclude(name__in=[p.name for p in spec.providers])
        routes_deleted += ModelRoute.objects.filter(provider__in=stale).count()
        deleted = stale.count()
        Price.objects.filter(provider__in=stale).delete()
        stale.delete()

    for price in spec.prices:
        prices_added += _price_add_if_changed(price)

    config_version_bump()
    return ApplyResult(providers_created=created, providers_updated=updated,
                       providers_deleted=deleted, routes_written=routes_written,
                       routes_deleted=routes_deleted, prices_added=prices_added)


def _provider_upsert(p: ProviderSpec) -> tuple[Provider, bool]:
    provider = Provider.objects.filter(name=p.name).first()
    created = provider is None
    provider = provider or Provider(name=p.name)
    provider.kind = p.kind
    provider.base_url = p.base_url
    provider.weight = p.weight
    provider.priority = p.priority
    provider.enabled = p.enabled
    provider.timeout_s = p.timeout_s
    provider.max_inflight = p.max_inflight
    provider.extra_headers = p.extra_headers
    if p.api_key is not None:
        provider.api_key_encrypted = secret_encrypt(p.api_key)
    provider.save()
    return provider, created


def _price_add_if_changed(p: PriceSpec) -> int:
    provider = None
    if p.provider is not None:
        provider = Provider.objects.filter(name=p.provider).first()
        if provider is None:
            raise ConfigError(f"prices: model {p.upstream_model}: unknown provider {p.provider!r}")
    now = timezone.now()
    current = (Price.objects.filter(upstream_model=p.upstream_model, provider=provider,
                                    effective_from__lte=p.effective_from or now)
               .order_by("-effective_from", "-id").first())
    if current and (current.input_per_mtok, current.output_per_mtok, current.cached_input_per_mtok) == (
            p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok):
        return 0
    Price.objects.create(
        upstream_model=p.upstream_model, provider=provider,
        input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok,
        cached_input_per_mtok=p.cached_input_per_mtok, effective_from=p.effective_from or now,
    )
    return 1


def _env_placeholder(provider_name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider_name.upper()) + "_API_KEY"


def config_export() -> str:
    """The current config as the YAML `config_apply` reads; secrets as `${ENV}` placeholders.
    Prices: the version in force now for each (model, provider)."""
    providers = []
    for provider in Provider.objects.prefetch_related("routes").order_by("name"):
        models = {}
        for route in sorted(provider.routes.all(), key=lambda r: r.public_model):
            if route.weight is None and route.priority is None:
                models[route.public_model] = route.upstream_model
            else:
                entry = {"upstream": route.upstream_model}
                if route.weight is not None:
                    entry["weight"] = route.weight
                if route.priority is not None:
                    entry["priority"] = route.priority
                models[route.public_model] = entry
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
        if price.cached_input_per_mtok is not None:
            item["cached_input"] = _decimal_text(price.cached_input_per_mtok)
        prices.append(item)
    return yaml.safe_dump({"providers": providers, "prices": prices}, sort_keys=False,
                          allow_unicode=True)


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def provider_secrets_rotate() -> int:
    """Re-encrypt every stored provider secret under the newest encryption key."""
    count = 0
    for provider in Provider.objects.exclude(api_key_encrypted=""):
        provider.api_key_encrypted = secret_rotate(provider.api_key_encrypted)
        provider.save(update_fields=["api_key_encrypted", "updated_at"])
        count += 1
    return count


@transaction.atomic
def api_key_create(*, name: str, team: str | None = None, models: list[str] | None = None,
                   budget_usd: Decimal | None = None, budget_period: str = "month",
                   rpm: int | None = None, tpm: int | None = None,
                   max_tokens_default: int | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns it with the raw secret, which is never stored or shown again."""
    team_obj = Team.objects.get_or_create(name=team)[0] if team else None
    raw = api_key_generate()
    key = ApiKey.objects.create(
        name=name, team=team_obj, prefix=api_key_prefix(raw), key_hash=api_key_hash(raw),
        allowed_models=sorted(set(models or [])), budget_usd=budget_usd,
        budget_period=budget_period, rpm_limit=rpm, tpm_limit=tpm,
        max_tokens_default=max_tokens_default,
    )
    config_version_bump()
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> None:
    key.revoked = True
    key.save(update_fields=["revoked"])
    config_version_bump()


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
    provider = Provider.objects.create(name="mock", kind=ProviderKind.MOCK, base_url="")
    ModelRoute.objects.create(public_model="demo", provider=provider, upstream_model="mock-echo")
    Price.objects.create(upstream_model="mock-echo", provider=None,
                         input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"),
                         cached_input_per_mtok=Decimal("0.075"))
    User = get_user_model()
    password = None
    if not User.objects.filter(username="admin").exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
    _, raw = api_key_create(name="demo")
    config_version_bump()
    return DemoSetup(admin_username="admin", admin_password=password, api_key=raw)
