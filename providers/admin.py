"""Admin for providers, routes, prices, teams and keys. Every save bumps the config version so
running servers follow within ~1 s. Secrets are write-only: never rendered back."""
from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from providers.crypto import secret_encrypt
from providers.keys import api_key_generate, api_key_hash, api_key_prefix
from providers.models import ApiKey, ModelRoute, Price, Provider, Team
from providers.services import api_key_revoke, config_version_bump


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


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(required=False, max_length=500, assume_scheme="https")
    api_key = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the stored key.")
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key", "clear_api_key", "weight", "priority",
                  "enabled", "timeout_s", "max_inflight", "breaker_failures", "breaker_cooldown_s",
                  "extra_headers"]

    def clean(self):
        data = super().clean()
        if data.get("kind") in ("openai", "anthropic") and not data.get("base_url"):
            self.add_error("base_url", "Required for this kind of provider.")
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


class ModelRouteInline(admin.TabularInline):
    model = ModelRoute
    extra = 0
    fields = ["public_model", "upstream_model", "weight", "priority", "enabled"]


@admin.register(Provider)
class ProviderAdmin(BumpsConfigVersion, admin.ModelAdmin):
    form = ProviderForm
    inlines = [ModelRouteInline]
    list_display = ["name", "kind", "base_url", "weight", "priority", "enabled", "key_set"]
    list_editable = ["weight", "priority", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "base_url"]

    @admin.display(boolean=True, description="API key set")
    def key_set(self, obj):
        return obj.has_api_key


@admin.register(ModelRoute)
class ModelRouteAdmin(BumpsConfigVersion, admin.ModelAdmin):
    list_display = ["public_model", "provider", "upstream_model", "weight", "priority", "enabled"]
    list_editable = ["weight", "priority", "enabled"]
    list_filter = ["provider", "enabled"]
    search_fields = ["public_model", "upstream_model"]


@admin.register(Price)
class PriceAdmin(BumpsConfigVersion, admin.ModelAdmin):
    """Prices are versioned: add a new row; existing rows are read-only."""

    list_display = ["upstream_model", "provider", "input_per_mtok", "output_per_mtok",
                    "cached_input_per_mtok", "effective_from", "in_force"]
    list_filter = ["provider"]
    search_fields = ["upstream_model"]

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(boolean=True)
    def in_force(self, obj):
        newest = (Price.objects.filter(upstream_model=obj.upstream_model, provider=obj.provider,
                                       effective_from__lte=timezone.now())
                  .order_by("-effective_from", "-id").values_list("pk", flat=True).first())
        return newest == obj.pk


@admin.register(Team)
class TeamAdmin(BumpsConfigVersion, admin.ModelAdmin):
    list_display = ["name", "budget_usd", "budget_period"]
    search_fields = ["name"]


@admin.register(ApiKey)
class ApiKeyAdmin(BumpsConfigVersion, admin.ModelAdmin):
    list_display = ["name", "prefix", "team", "budget_usd", "budget_period", "revoked", "created_at"]
    list_filter = ["revoked", "team"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at"]
    exclude = ["key_hash"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if not change:
            raw = api_key_generate()
            obj.prefix, obj.key_hash = api_key_prefix(raw), api_key_hash(raw)
            messages.warning(request, f"New API key (shown once, store it now): {raw}")
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
