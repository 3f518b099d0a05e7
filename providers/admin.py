"""Admin for providers, routes, prices, teams and keys. Every save goes live on running servers
within ~1 s (routes, providers and prices bump the config version; keys and teams publish a key
change, which reloads nothing), and is written to the audit log (who, when, what changed;
secrets masked, see `providers.services.audit_state`). Secrets are write-only: never rendered
back. Providers also offer a "test connection" action and show their circuits read-only."""
from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import models
from django.db.models import OuterRef, Subquery
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from gateway.adapters import upstream_send
from gateway.adapters.base import UpstreamError
from gateway.clients import client_pool
from gateway.dialects import AZURE_RESPONSES_KIND, DIALECTS, RESPONSES_KIND, dialect_for
from gateway.redis_client import redis_async
from gateway.routing import Candidate
from gateway.routing_state import BreakerView, RedisRoutingState
from providers.catalog import CatalogMissing, CatalogPrice, catalog_price
from providers.crypto import SecretUnreadable, secret_decrypt, secret_encrypt
from providers.forms import ApiKeyForm, KeyRotateForm
from providers.keys import api_key_generate, api_key_hash, api_key_prefix
from providers.models import (
    ApiKey, AuditAction, AuditLog, ModelRoute, Price, Provider, Team,
)
from providers.selectors import (Deployment, budget_spent_units, route_shares_annotate,
                                 routing_snapshot_load)
from providers.capabilities import route_capabilities, route_capabilities_problem
from providers.translation import credentials_problem, translation_problem
from providers.validation import base_url_problem
from providers.services import (PriceSyncOutcome, api_key_changes_publish, api_key_digests,
                                api_key_revoke, api_key_rotate, audit_log_write, audit_state,
                                config_version_bump, prices_sync)
from usage.budgets import units_to_usd
from usage.models import UsageRecord

CONNECTION_TEST_TIMEOUT_S = 15.0
RESPONSES_KINDS = {RESPONSES_KIND, AZURE_RESPONSES_KIND}

admin.site.site_header = "LLM Gateway"
admin.site.site_title = "LLM Gateway admin"
admin.site.index_title = "Configuration and ledger"
# The lists (ledger, providers, routes, keys) need the width at 1366 px more than a second
# copy of the index: the 275 px sidebar left the ledger table 760 px. The breadcrumbs and the
# header links navigate instead.
admin.site.enable_nav_sidebar = False


class BumpsConfigVersion:
    """Admin writes go live on running servers (providers.cache polls the version)."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        config_version_bump()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        config_version_bump()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        config_version_bump()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        config_version_bump()


class PublishesKeyChanges:
    """Admin writes of keys and teams go live on running servers as key changes: the key's
    digests, or every key of the team, are evicted from each server's key cache
    (providers.services.api_key_changes_publish); the routing snapshot is not reloaded."""

    def _publish(self, objs) -> None:
        for obj in objs:
            if isinstance(obj, Team):
                api_key_changes_publish(team=obj)
            else:
                api_key_changes_publish(digests=api_key_digests(obj))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self._publish([obj])

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self._publish([obj])

    def delete_queryset(self, request, queryset):
        objs = list(queryset)
        super().delete_queryset(request, queryset)
        self._publish(objs)


class Audited:
    """Writes every admin add, change and delete (inline rows included) to the audit log, with
    the admin user. Put it before BumpsConfigVersion or PublishesKeyChanges in the bases."""

    def save_model(self, request, obj, form, change):
        before = audit_state(type(obj).objects.get(pk=obj.pk)) if change and obj.pk else None
        super().save_model(request, obj, form, change)
        audit_log_write(obj=obj, action=AuditAction.CHANGE if change else AuditAction.ADD,
                        before=before, after=audit_state(obj), user=request.user)

    def save_related(self, request, form, formsets, change):
        def states():
            out = {}
            for formset in formsets:
                rows = formset.model.objects.filter(**{formset.fk.name: form.instance})
                out.update({(formset.model, row.pk): (row, audit_state(row)) for row in rows})
            return out

        before = states()
        super().save_related(request, form, formsets, change)
        after = states()
        for key in before.keys() | after.keys():
            old, new = before.get(key), after.get(key)
            action = (AuditAction.ADD if old is None else AuditAction.DELETE if new is None
                      else AuditAction.CHANGE)
            audit_log_write(obj=(new or old)[0], action=action, before=old and old[1],
                            after=new and new[1], user=request.user)

    def delete_model(self, request, obj):
        audit_log_write(obj=obj, action=AuditAction.DELETE, before=audit_state(obj), after=None,
                        user=request.user)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            audit_log_write(obj=obj, action=AuditAction.DELETE, before=audit_state(obj),
                            after=None, user=request.user)
        super().delete_queryset(request, queryset)


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(
        label="Base URL", required=False, max_length=500, assume_scheme="https",
        help_text="The API root, e.g. https://api.openai.com/v1. Empty where the kind has a "
                  "default.")
    api_key = forms.CharField(
        label="API key", required=False, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the stored key.")
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key", "clear_api_key", "weight", "priority",
                  "enabled", "timeout_s", "max_inflight", "breaker_failures", "breaker_cooldown_s",
                  "extra_headers", "translation"]

    def clean(self):
        data = super().clean()
        dialect = DIALECTS.get(data.get("kind"))
        if "base_url" in self.errors:
            pass  # the field's own error ("Enter a valid URL.") is the one to show
        elif dialect is not None and dialect.base_url_required and not data.get("base_url"):
            self.add_error("base_url", "Required for this kind of provider.")
        elif data.get("base_url"):
            problem = base_url_problem(data["base_url"])
            if problem:
                self.add_error("base_url", f"The URL {problem}.")
        data["translation"] = data.get("translation") or {}
        problem = translation_problem(data["translation"], kind=data.get("kind"))
        if problem:
            self.add_error("translation", problem)
        kept = bool(self.instance.api_key_encrypted) and not data.get("clear_api_key")
        if dialect is not None and dialect.api_key_required and not (data.get("api_key")
                                                                     or kept):
            self.add_error("api_key", "Required for this kind of provider (with Entra ID "
                                      "settings: the client secret).")
        if dialect is not None and data.get("api_key") and (
                problem := credentials_problem(kind=dialect.kind, api_key=data["api_key"])):
            self.add_error("api_key", f"For this kind of provider the key {problem}.")
        return data

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.api_key_encrypted = ""
        elif self.cleaned_data.get("api_key"):
            provider.api_key_encrypted = secret_encrypt(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


ROUTE_LABELS = {"weight": "Weight", "priority": "Priority", "enabled": "Route enabled",
                "reasoning": "Reasons", "max_output_tokens": "Output limit (tokens)",
                "responses_api": "Responses API"}
ROUTE_HELP = {"weight": "Empty: the provider's weight.",
              "priority": "Empty: the provider's priority. Lower is tried first.",
              "reasoning": "Whether the model takes a reasoning effort (thinking budgets and "
                           "efforts become reasoning_effort; elsewhere they are dropped). "
                           "Inherit: the provider's setting, else the price catalog or the "
                           "known model families, else the kind's default.",
              "max_output_tokens": "A larger max_tokens is lowered to this. Empty: the "
                                   "provider's setting, else the catalog's context window.",
              "responses_api": "OpenAI-compatible and Azure OpenAI only: reach this route "
                               "through /v1/responses (Yes) or Chat Completions (No). "
                               "Inherit: as its provider does."}
# Where a resolved capability came from (providers.capabilities), in the admin's words.
CAPABILITY_SOURCES = {"route": "this route", "provider": "provider", "catalog": "catalog",
                      "model family": "known model family", "default": "default"}


class InheritSelect(forms.NullBooleanSelect):
    """A route's nullable yes/no: empty inherits (the provider's, the catalog's ...)."""

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.choices = [("unknown", "Inherit"), ("true", "Yes"), ("false", "No")]


def route_capabilities_html(route: ModelRoute | None):
    """The route's effective capabilities, each with where it came from."""
    if route is None or route.pk is None or route.provider_id is None:
        return "—"
    caps = route_capabilities(route)
    reasons = {True: "yes", False: "no", None: "unknown"}[caps.reasoning.value]
    limit = caps.max_output_tokens.value
    rows = (("Reasons", reasons, caps.reasoning.source),
            ("Output limit", f"{limit:,} tokens" if limit else "none",
             caps.max_output_tokens.source),
            ("Wire", "Responses API" if caps.kind in RESPONSES_KINDS else caps.kind,
             caps.responses_api.source))
    return format_html_join(
        "", '<span class="nowrap">{}: {} <small>({})</small></span><br>',
        ((label, value, CAPABILITY_SOURCES[source]) for label, value, source in rows))


def _responses_api_problem(kind: str | None, value: bool | None) -> str | None:
    problem = route_capabilities_problem(kind=kind or "", responses_api=value)
    return problem.replace("responses_api: only for kind", "Only for providers of kind") \
        if problem else None


class ModelRouteFormSet(forms.BaseInlineFormSet):
    """A provider's routes; responses_api only where the provider's kind has that wire."""

    def clean(self):
        super().clean()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if data.get("DELETE"):
                continue
            if problem := _responses_api_problem(self.instance.kind, data.get("responses_api")):
                form.add_error("responses_api", problem)


class ModelRouteForm(forms.ModelForm):
    def clean(self):
        data = super().clean()
        provider = data.get("provider")
        if provider is not None and (problem := _responses_api_problem(
                provider.kind, data.get("responses_api"))):
            self.add_error("responses_api", problem)
        return data


class ModelRouteInline(admin.TabularInline):
    model = ModelRoute
    formset = ModelRouteFormSet
    extra = 0
    fields = ["public_model", "upstream_model", "weight", "priority", "enabled", "reasoning",
              "max_output_tokens", "responses_api", "capabilities"]
    readonly_fields = ["capabilities"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in ("reasoning", "responses_api"):
            kwargs["widget"] = InheritSelect
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and db_field.name in ROUTE_HELP:
            field.label = ROUTE_LABELS.get(db_field.name, field.label)
            field.help_text = ROUTE_HELP[db_field.name]
        return field

    @admin.display(description="In effect")
    def capabilities(self, obj):
        return route_capabilities_html(obj)


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    text: str


def provider_connection_test(provider: Provider) -> ConnectionResult:
    """Send one tiny request (one user word, at most 1 output token) through the provider's
    adapter, on its first enabled route (or first route), and report the outcome. Runs its
    own event loop; call from sync code only. Never raises for upstream failures."""
    route = (provider.routes.filter(enabled=True).order_by("id").first()
             or provider.routes.order_by("id").first())
    if route is None:
        return ConnectionResult(False, f"{provider.name}: no model route to test with.")
    try:
        api_key = secret_decrypt(provider.api_key_encrypted)
    except SecretUnreadable:
        return ConnectionResult(False, f"{provider.name}: the stored API key cannot be decrypted "
                                       "with the configured encryption keys.")
    timeout_s = min(provider.timeout_s, CONNECTION_TEST_TIMEOUT_S)
    capabilities = route_capabilities(route)
    kind = capabilities.kind
    deployment = Deployment(
        route_id=route.id, provider_id=provider.id, provider_name=provider.name,
        kind=kind, base_url=provider.base_url.rstrip("/"),
        upstream_model=route.upstream_model, weight=route.effective_weight,
        priority=route.effective_priority, timeout_s=timeout_s, max_inflight=provider.max_inflight,
        candidate=Candidate(route_id=route.id, provider_id=provider.id, weight=1, priority=0,
                            max_inflight=provider.max_inflight),
        codec_options=capabilities.codec_options,
        extra_headers=tuple((str(k), str(v)) for k, v in (provider.extra_headers or {}).items()),
        api_key=api_key)
    dialect = dialect_for(kind)
    body = dialect.probe(route.upstream_model)

    async def send() -> dict:
        try:
            async with asyncio.timeout(timeout_s + 1):
                response = await upstream_send(deployment, operation="chat", body=body,
                                               stream=False, request_id=f"admin-test-{provider.id}")
                return await response.json()
        finally:
            await client_pool.close()

    started = time.monotonic()
    try:
        data = asyncio.run(send())
    except UpstreamError as exc:
        return ConnectionResult(False, f"{provider.name}: failed after "
                                       f"{(time.monotonic() - started) * 1000:.0f} ms: {exc.message}")
    except TimeoutError:
        return ConnectionResult(False, f"{provider.name}: no answer within {timeout_s:g} s.")
    elapsed_ms = (time.monotonic() - started) * 1000
    usage = data.get(dialect.usage_field)
    usage = usage if isinstance(usage, dict) else {}
    tokens = ", ".join(f"{k} {v}" for k, v in usage.items() if isinstance(v, int))
    return ConnectionResult(True, f"{provider.name}: OK in {elapsed_ms:.0f} ms "
                                  f"({route.public_model} → {route.upstream_model}"
                                  f"{'; usage: ' + tokens if tokens else ''}).")


def circuit_views(provider: Provider) -> tuple[list[tuple[str, BreakerView]] | None, str]:
    """The circuits of the provider's live routes, read from the shared Redis state, with a
    note; (None, reason) when they cannot be seen from here (no Redis: state is per process)."""
    if not settings.REDIS_URL:
        return None, "per-process state: not visible from the admin (set REDIS_URL to share it)"
    deployments = [(public_model, d)
                   for public_model, ds in routing_snapshot_load().deployments.items()
                   for d in ds if d.provider_id == provider.pk]
    if not deployments:
        return None, "no enabled route"

    async def read() -> dict[int, BreakerView]:
        client = redis_async(max_connections=4, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return await RedisRoutingState(client).snapshot([d.candidate for _, d in deployments])
        finally:
            await client.aclose()

    views = asyncio.run(read())
    if not all(v.shared for v in views.values()):
        return None, "Redis unreachable: the shared state cannot be read"
    return ([(f"{public_model} → {d.upstream_model}", views[d.route_id])
             for public_model, d in sorted(deployments, key=lambda item: item[0])],
            "shared state (Redis), read when this page was loaded")


@admin.register(Provider)
class ProviderAdmin(Audited, BumpsConfigVersion, admin.ModelAdmin):
    form = ProviderForm
    inlines = [ModelRouteInline]
    list_display = ["name", "kind", "base_url_short", "weight", "priority", "enabled", "key_set"]
    list_editable = ["weight", "priority", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["circuit_state"]
    actions = ["test_connection"]

    @admin.display(boolean=True, description="API key set")
    def key_set(self, obj):
        return obj.has_api_key

    @admin.display(description="Base URL", ordering="base_url")
    def base_url_short(self, obj):
        # Cut by CSS (templates/admin/base_site.html) so the list fits 1366 px; whole on hover.
        return format_html('<span class="cut" title="{}">{}</span>', obj.base_url,
                           obj.base_url) if obj.base_url else "default"

    def get_changelist_form(self, request, **kwargs):
        # Only the editable columns: a form of every field would build a URLField for base_url
        # without `assume_scheme` (a Django 6.0 deprecation warning on every list view).
        kwargs.setdefault("fields", self.list_editable)
        return super().get_changelist_form(request, **kwargs)

    @admin.action(description="Test connection (one tiny request)")
    def test_connection(self, request, queryset):
        for provider in queryset:
            result = provider_connection_test(provider)
            self.message_user(request, result.text, messages.SUCCESS if result.ok else messages.ERROR)

    @admin.display(description="Circuit state")
    def circuit_state(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        rows, note = circuit_views(obj)
        if rows is None:
            return note
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (label, view.state, view.consecutive_failures, view.last_error_class or "—",
             f"{view.in_flight}/{view.max_inflight}" if view.max_inflight else view.in_flight)
            for label, view in rows))
        return format_html(
            '<table class="circuits"><thead><tr><th>Route</th><th>State</th>'
            "<th>Consecutive failures</th><th>Last error</th><th>In flight</th></tr></thead>"
            "<tbody>{}</tbody></table><p>{}</p>", body, note)


class ServedFilter(admin.SimpleListFilter):
    title = "served"
    parameter_name = "served"

    def lookups(self, request, model_admin):
        return [("yes", "Served"), ("no", "Not served")]

    def queryset(self, request, queryset):
        served = ModelRoute.objects.enabled().values("pk")
        if self.value() == "yes":
            return queryset.filter(pk__in=served)
        if self.value() == "no":
            return queryset.exclude(pk__in=served)
        return queryset


@admin.register(ModelRoute)
class ModelRouteAdmin(Audited, BumpsConfigVersion, admin.ModelAdmin):
    """Routes with whether they serve traffic (route and provider enabled), their effective
    weight and priority (a blank one inherits the provider's) and their share of the public
    model's requests within their priority tier (providers.selectors.traffic_shares)."""

    list_display = ["public_model", "provider", "upstream_model", "weight", "priority", "enabled",
                    "served", "share"]
    list_editable = ["weight", "priority", "enabled"]
    list_filter = [ServedFilter, "provider", "enabled"]
    search_fields = ["public_model", "upstream_model"]
    list_select_related = ["provider"]
    form = ModelRouteForm
    fields = ["public_model", "provider", "upstream_model", "weight", "priority", "enabled",
              "reasoning", "max_output_tokens", "responses_api", "capabilities"]
    readonly_fields = ["capabilities"]

    @admin.display(description="In effect")
    def capabilities(self, obj):
        return route_capabilities_html(obj)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in ("reasoning", "responses_api"):
            kwargs["widget"] = InheritSelect
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and db_field.name in ROUTE_LABELS:
            field.label = ROUTE_LABELS[db_field.name]
            field.help_text = ROUTE_HELP.get(db_field.name, field.help_text)
        return field

    def get_queryset(self, request):
        return route_shares_annotate(super().get_queryset(request))

    def get_changelist_form(self, request, **kwargs):
        class RouteRowForm(super().get_changelist_form(request, **kwargs)):
            """A blank weight or priority shows the provider's, which it inherits."""

            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                route = self.instance
                if route.pk:
                    for name, value in (("weight", route.effective_weight),
                                        ("priority", route.effective_priority)):
                        self.fields[name].widget.attrs["placeholder"] = value
                        self.fields[name].widget.attrs["title"] = (
                            f"Empty: the provider's {name} ({value})")

        return RouteRowForm

    @admin.display(description="Served")
    def served(self, obj):
        if not obj.provider.enabled:
            return format_html('<span class="state off" title="Provider {} is disabled">{}</span>',
                               obj.provider.name, "No: provider disabled")
        if not obj.enabled:
            return format_html('<span class="state off">{}</span>', "No: route disabled")
        return format_html('<span class="state on">{}</span>', "Served")

    @admin.display(description="Traffic share")
    def share(self, obj):
        if not (obj.enabled and obj.provider.enabled) or not obj.tier_weight:
            return "—"
        return format_html(
            '<span class="nowrap" title="Weight {} of {} at priority {}">{}</span>',
            obj.effective_weight, obj.tier_weight, obj.effective_priority,
            f"{obj.effective_weight / obj.tier_weight:.0%} at priority {obj.effective_priority}")


def _price_in_force_pk(price: Price) -> int | None:
    return (Price.objects.filter(upstream_model=price.upstream_model, provider=price.provider_id,
                                 effective_from__lte=timezone.now())
            .order_by("-effective_from", "-id").values_list("pk", flat=True).first())


class PriceSupersedeForm(forms.ModelForm):
    """The rates of a new price version (every rate field of Price, whatever it holds)."""

    class Meta:
        model = Price
        fields = [f.name for f in Price._meta.concrete_fields
                  if isinstance(f, models.DecimalField) or f.name.startswith("long_context")]


# Short names of the rates, in PRICE_RATE_FIELDS order, for the catalog comparison.
_RATE_LABELS = {
    "input_per_mtok": "input", "output_per_mtok": "output", "cached_input_per_mtok": "cache read",
    "cache_write_5m_per_mtok": "cache write 5m", "cache_write_1h_per_mtok": "cache write 1h",
    "reasoning_per_mtok": "reasoning", "audio_input_per_mtok": "audio in",
    "audio_output_per_mtok": "audio out", "image_input_per_mtok": "image in",
    "image_output_per_mtok": "image out", "long_context_threshold": "long context above",
}


def _rate_label(name: str) -> str:
    if name in _RATE_LABELS:
        return _RATE_LABELS[name]
    return "long context " + _RATE_LABELS[name.replace("long_context_", "")]


def _rate_text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,} tokens"
    return f"${value.normalize():f}"


def price_catalog_lookup(price: Price) -> CatalogPrice | str:
    """The catalog's price for this row's model at its provider (a generic row: at the first
    provider, by name, with an enabled route to the model), or why there is none."""
    providers = ([price.provider] if price.provider_id else
                 [r.provider for r in ModelRoute.objects.filter(
                     upstream_model=price.upstream_model, enabled=True)
                  .select_related("provider").order_by("provider__name")])
    reason = "no route serves this model"
    for provider in providers:
        try:
            return catalog_price(kind=provider.kind, base_url=provider.base_url,
                                 upstream_model=price.upstream_model, at=timezone.now())
        except CatalogMissing as exc:
            reason = str(exc)
    return reason


@admin.register(Price)
class PriceAdmin(Audited, BumpsConfigVersion, admin.ModelAdmin):
    """Prices are versioned: add a new row; existing rows are read-only. A version is in force
    from its `effective_from` until a newer version of the same (model, provider) starts.
    Each row shows the catalog's price (genai-prices, offline) beside its own and flags the
    rates that differ; the action "Sync from the catalog" runs prices_sync."""

    list_display = ["upstream_model", "provider", "input_per_mtok", "output_per_mtok",
                    "cached_input_per_mtok", "effective_from", "in_force", "source", "catalog"]
    list_filter = ["provider", "source"]
    search_fields = ["upstream_model"]
    readonly_fields = ["in_force", "new_version", "source", "catalog_version", "catalog_date",
                       "catalog_price"]
    actions = ["catalog_sync"]

    change_form_template = "admin/providers/price/change_form.html"

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def get_urls(self):
        return [path("<path:object_id>/supersede/", self.admin_site.admin_view(self.supersede_view),
                     name="providers_price_supersede"), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and "supersede_form" not in extra_context and \
                self.has_add_permission(request):
            extra_context["supersede_form"] = PriceSupersedeForm(
                prefix="supersede", initial={f: getattr(obj, f) for f in PriceSupersedeForm.Meta.fields})
        if "supersede_form" in extra_context:
            extra_context["supersede_url"] = reverse("admin:providers_price_supersede",
                                                     args=[obj.pk])
        return super().change_view(request, object_id, form_url, extra_context)

    def supersede_view(self, request, object_id):
        """POST: a new version of this price with the posted rates, in force from now (same
        model and provider); this version stays as it was. Invalid rates: this price's page
        again, with the errors and nothing saved."""
        old = self.get_object(request, unquote(object_id))
        if old is None or request.method != "POST" or not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:providers_price_changelist"))
        new = Price(upstream_model=old.upstream_model, provider=old.provider,
                    effective_from=timezone.now())
        form = PriceSupersedeForm(request.POST, prefix="supersede", instance=new)
        if not form.is_valid():
            self.message_user(request, "The new version was not saved: correct the rates below.",
                              messages.ERROR)
            # The price's own (read-only) page, rendered as for a GET, with the bound form.
            page_request = copy.copy(request)
            page_request.method = "GET"
            return self.change_view(page_request, object_id,
                                    extra_context={"supersede_form": form})
        new = form.save(commit=False)
        self.save_model(request, new, form, change=False)
        self.log_addition(request, new, [{"added": {}}])
        self.message_user(request, f"{new} now supersedes the version of "
                                   f"{old.effective_from:%Y-%m-%d %H:%M:%S}, which is unchanged.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:providers_price_change", args=[new.pk]))

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    @admin.display(boolean=True)
    def in_force(self, obj):
        return _price_in_force_pk(obj) == obj.pk

    @admin.display(description="Catalog (genai-prices)")
    def catalog(self, obj):
        """The catalog's input / output rates, and whether this row's rates match it."""
        found = price_catalog_lookup(obj)
        if isinstance(found, str):
            return format_html('<span title="{}">not in catalog</span>', found)
        differs = found.differs_from(obj)
        flag = (format_html('<span class="state off" title="{}">differs</span>',
                            ", ".join(_rate_label(f) for f in differs)) if differs
                else format_html('<span class="state on">{}</span>', "same"))
        return format_html('<span class="nowrap">{} / {}</span> {}',
                           _rate_text(found.rates["input_per_mtok"]),
                           _rate_text(found.rates["output_per_mtok"]), flag)

    @admin.display(description="Catalog's price")
    def catalog_price(self, obj):
        """Every rate the catalog gives beside this version's, the differing ones flagged."""
        found = price_catalog_lookup(obj)
        if isinstance(found, str):
            return f"Not in the catalog: {found}."
        rows = [(_rate_label(name), _rate_text(getattr(obj, name)), _rate_text(found.rates[name]),
                 "differs" if getattr(obj, name) != found.rates[name] else "")
                for name in found.rates
                if getattr(obj, name) is not None or found.rates[name] is not None]
        when = f", dated {found.date:%Y-%m-%d}" if found.date else ""
        return format_html(
            '<table class="catalog-price"><caption>{} {} in genai-prices {}{}</caption>'
            '<tr><th>rate</th><th>this version</th><th>catalog</th><th></th></tr>{}</table>',
            found.catalog_provider, found.catalog_model, found.version, when,
            format_html_join("", '<tr><td>{}</td><td>{}</td><td>{}</td>'
                                 '<td><span class="state off">{}</span></td></tr>', rows))

    def changelist_view(self, request, extra_context=None):
        # The catalog sync acts on the models in use, not on a selection: it runs with none
        # (Django refuses an action without a selected row, even on an empty list).
        if (request.method == "POST" and request.POST.get("action") == "catalog_sync"
                and not request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)):
            post = request.POST.copy()
            post.setlist(admin.helpers.ACTION_CHECKBOX_NAME, ["0"])
            post["select_across"] = "1"
            request.POST = post
        return super().changelist_view(request, extra_context)

    @admin.action(description="Sync from the catalog (genai-prices): every model in use, "
                              "whatever is selected", permissions=["add"])
    def catalog_sync(self, request, queryset):
        """prices_sync for every enabled route, as this admin; lists what it added."""
        items = prices_sync(actor=request.user.get_username(), user=request.user)
        added = [i for i in items if i.outcome == PriceSyncOutcome.ADDED]
        counts = ", ".join(f"{n} {outcome}" for outcome in PriceSyncOutcome
                           if (n := sum(i.outcome == outcome for i in items)))
        self.message_user(request, f"Catalog sync: {counts or 'no upstream models in use'}.",
                          messages.SUCCESS if added else messages.INFO)
        for item in added:
            self.message_user(request, f"Added {item.added} ({item.detail}).", messages.SUCCESS)

    @admin.display(description="New version")
    def new_version(self, obj):
        initial = {"upstream_model": obj.upstream_model, "input_per_mtok": obj.input_per_mtok,
                   "output_per_mtok": obj.output_per_mtok}
        if obj.provider_id:
            initial["provider"] = obj.provider_id
        if obj.cached_input_per_mtok is not None:
            initial["cached_input_per_mtok"] = obj.cached_input_per_mtok
        return format_html('<a href="{}?{}">Add a new version based on this one</a>',
                           reverse("admin:providers_price_add"), urlencode(initial))


USAGE_COUNT_CAP = 1000


def _usage_count(**scope) -> str:
    """The ledger rows of one key or team, counted up to a cap (one index range scan)."""
    n = UsageRecord.objects.filter(**scope).order_by()[:USAGE_COUNT_CAP + 1].count()
    return f"{USAGE_COUNT_CAP}+ ledger rows" if n > USAGE_COUNT_CAP else \
        f"{n} ledger row{'s' if n != 1 else ''}"


class KeepsUsageHistory:
    """Refuses to delete an object the ledger has rows for (CONTRACT §6: a key or team with
    usage cannot be deleted, only revoked), from its page and from the bulk action, with a
    message naming the usage and what to do instead. Objects without usage delete as usual.
    `usage_field`: the ledger's foreign key to the model; `noun`: the model in the message;
    `instead`: what to do."""

    usage_field: str
    noun: str
    instead: str

    def _used(self, objs) -> list[str]:
        return [f"“{obj}” ({_usage_count(**{self.usage_field: obj.pk})})" for obj in objs
                if UsageRecord.objects.filter(**{self.usage_field: obj.pk}).exists()]

    def _refuse(self, request, used: list[str], selected: int) -> None:
        what = (f"{self.noun.capitalize()} {used[0]} has usage" if selected == 1 else
                f"{len(used)} of the {selected} selected {self.noun}s have usage: "
                f"{', '.join(used)}. Nothing was deleted")
        self.message_user(request, f"{what}; a {self.noun} with usage cannot be deleted, or its "
                                   f"past spend would lose its {self.noun} in every report. "
                                   f"{self.instead}", messages.ERROR)

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and self.has_delete_permission(request, obj):
            used = self._used([obj])
            if used:
                self._refuse(request, used, 1)
                return HttpResponseRedirect(reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            delete_selected, name, description = actions["delete_selected"]

            def refusing_delete_selected(modeladmin, request, queryset):
                objs = list(queryset)
                used = self._used(objs)
                if used:
                    self._refuse(request, used, len(objs))
                    return None
                return delete_selected(modeladmin, request, queryset)

            actions["delete_selected"] = (refusing_delete_selected, name, description)
        return actions


def spend_against_budget(obj: ApiKey | Team) -> str:
    """`$1.23 of $10.00 (12 %)` for a key or team annotated with `spent_units`
    (providers.selectors.budget_spent_units); without a budget, the spend alone."""
    spent = units_to_usd(obj.spent_units or 0)
    text = f"${spent:,.2f}" if spent >= 1 or not spent else f"${spent:.4f}"
    if obj.budget_usd is None:
        return format_html('<span class="spend">{} <small>no budget</small></span>', text)
    pct = spent / obj.budget_usd * 100 if obj.budget_usd else (100 if spent else 0)
    level = "over" if pct >= 100 else "near" if pct >= 80 else "ok"
    return format_html('<span class="spend {}">{} of ${} ({} %)'
                       '<meter min="0" max="100" value="{}"></meter></span>', level, text,
                       f"{obj.budget_usd:,.2f}", f"{pct:.0f}", f"{min(pct, 100):.0f}")


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked=False).exclude(expires_at__lte=now)
        if self.value() == "expired":
            return queryset.filter(revoked=False, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked=True)
        return queryset


@admin.register(Team)
class TeamAdmin(KeepsUsageHistory, Audited, PublishesKeyChanges, admin.ModelAdmin):
    usage_field = "team"
    noun = "team"
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    instead = ("Revoke its keys instead (API keys filtered by this team, action “Revoke "
               "selected keys”) and clear its budget; the team stays for the history.")
    list_display = ["name", "spend", "budget_period"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            spent_units=budget_spent_units(scope="team", now=timezone.now()))

    @admin.display(description="Spend this period / budget")
    def spend(self, obj):
        return spend_against_budget(obj)


@admin.register(ApiKey)
class ApiKeyAdmin(KeepsUsageHistory, Audited, PublishesKeyChanges, admin.ModelAdmin):
    usage_field = "api_key"
    noun = "key"
    instead = ("Revoke it instead: the “Revoke selected keys” action, or tick “Revoked” on the "
               "key's page.")
    form = ApiKeyForm
    list_display = ["name", "prefix", "team", "spend", "status", "expires_at", "last_used"]
    list_filter = [KeyStatusFilter, "team"]
    list_select_related = ["team"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used", "previous_key_expires_at"]
    exclude = ["key_hash", "previous_key_hash"]
    actions = ["revoke", "rotate"]

    def get_queryset(self, request):
        # One index seek per key on (api_key, created_at), never a scan of the ledger; the
        # period's spend from its budget counter, in the same query.
        last = (UsageRecord.objects.filter(api_key=OuterRef("pk")).order_by("-created_at")
                .values("created_at")[:1])
        return super().get_queryset(request).annotate(
            last_used_at=Subquery(last),
            spent_units=budget_spent_units(scope="key", now=timezone.now()))

    @admin.display(description="Last used", ordering="last_used_at")
    def last_used(self, obj):
        return getattr(obj, "last_used_at", None) or "never"

    @admin.display(description="Status", ordering="revoked")
    def status(self, obj):
        if obj.revoked:
            return format_html('<span class="state off">{}</span>', "Revoked")
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return format_html('<span class="state off">{}</span>', "Expired")
        return format_html('<span class="state on">{}</span>', "Active")

    @admin.display(description="Spend this period / budget")
    def spend(self, obj):
        return spend_against_budget(obj)

    def save_model(self, request, obj, form, change):
        if not change:
            raw = api_key_generate()
            obj.prefix, obj.key_hash = api_key_prefix(raw), api_key_hash(raw)
            request.new_api_key_secret = raw
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        """The new secret, once, on the page that answers the POST (never stored, not even in
        a message cookie), with a copy button."""
        raw = getattr(request, "new_api_key_secret", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        return self._secrets_page(request, [(obj, raw)], title="New API key", note=None)

    def _secrets_page(self, request, secrets: list[tuple[ApiKey, str]], *, title: str,
                      note: str | None) -> TemplateResponse:
        return TemplateResponse(request, "admin/providers/apikey/secrets.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": title,
            "secrets": secrets, "note": note,
            "changelist_url": reverse("admin:providers_apikey_changelist")})

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset:
            api_key_revoke(key=key, user=request.user)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    @admin.action(description="Rotate selected keys (new secret, old one valid for a grace "
                              "period)")
    def rotate(self, request, queryset):
        """First a page asking for the grace period; on its POST, a new secret per key, shown
        once. Revoked keys are skipped."""
        keys = list(queryset.filter(revoked=False))
        form = KeyRotateForm(request.POST if "grace_hours" in request.POST else None)
        if not keys:
            self.message_user(request, "Only active keys can be rotated.", messages.ERROR)
            return None
        if form.is_bound and form.is_valid():
            secrets = [(key, api_key_rotate(key=key, grace=form.grace, user=request.user))
                       for key in keys]
            until = timezone.localtime(timezone.now() + form.grace)
            note = (f"The previous secrets keep working until {until:%Y-%m-%d %H:%M:%S %Z}, "
                    "then stop." if form.grace else "The previous secrets stopped working now.")
            return self._secrets_page(request, secrets, title="Rotated API keys", note=note)
        return TemplateResponse(request, "admin/providers/apikey/rotate.html", {
            **self.admin_site.each_context(request), "opts": self.opts,
            "title": "Rotate API keys", "keys": keys, "form": form,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME})


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """Read-only: the log is written by the admin and the services, never edited."""

    list_display = ["at", "actor", "action", "object_type", "object_repr", "summary"]
    list_filter = ["action", "object_type", "actor"]
    search_fields = ["object_repr", "actor", "object_id"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="What changed")
    def summary(self, obj):
        parts = []
        for field, change in (obj.changes or {}).items():
            if isinstance(change, list) and len(change) == 2:
                parts.append(f"{field}: {change[0]!r} → {change[1]!r}")
            else:
                parts.append(f"{field}: {change}")
        return "; ".join(parts)[:500]
