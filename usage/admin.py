"""The ledger in the admin: read-only, filterable by key, team, model, provider and status,
searchable by key name, with times to the second and a total (cost and tokens) of the rows the
filters select. Columns are chosen and cut so the list fits 1366 px
(templates/admin/usage/usagerecord/change_list.html)."""
from django.contrib import admin
from django.db.models import Count, Sum
from django.utils import timezone
from django.utils.html import format_html

from providers.models import ApiKey, ModelRoute, Team
from usage.models import UsageRecord

TOTALS = {"rows": Count("pk"), "cost": Sum("cost_usd"), "input": Sum("input_tokens"),
          "output": Sum("output_tokens")}


def _cut(text: str) -> str:
    """A list cell cut to its column by CSS (providers/static/providers/admin.css), whole on
    hover."""
    return format_html('<span class="cut" title="{}">{}</span>', text, text) if text else "—"


class _ChoicesFilter(admin.SimpleListFilter):
    """A filter on one ledger column whose choices come from a small table (keys, teams,
    routes), never from a scan of the ledger."""

    field: str

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class KeyFilter(_ChoicesFilter):
    title = "key"
    parameter_name = "key"
    field = "api_key_id"

    def lookups(self, request, model_admin):
        return [(str(pk), f"{name} ({prefix}…)")
                for pk, name, prefix in ApiKey.objects.values_list("pk", "name", "prefix")]


class TeamFilter(_ChoicesFilter):
    title = "team"
    parameter_name = "team"
    field = "team_id"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Team.objects.values_list("pk", "name")]


class ModelFilter(_ChoicesFilter):
    title = "model"
    parameter_name = "model"
    field = "public_model"

    def lookups(self, request, model_admin):
        names = sorted(set(ModelRoute.objects.values_list("public_model", flat=True)))
        current = self.value()
        if current and current not in names:
            names.append(current)  # a model whose routes are gone since
        return [(name, name) for name in names]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    # Method names end in _cell: `model` and the like are ModelAdmin attributes.
    list_display = ["created_cell", "key_cell", "team_cell", "model_cell", "provider_cell",
                    "status", "tokens_cell", "cost_cell", "latency_cell"]
    list_filter = ["status", KeyFilter, TeamFilter, ModelFilter, "provider_name", "surface",
                   "usage_source"]
    search_fields = ["request_id", "client_request_id", "key_prefix", "key_name",
                     "public_model"]
    search_help_text = "Request id, key name or prefix, or model."
    date_hierarchy = "created_at"
    # A COUNT(*) of a large ledger on every page is slow; filtered counts are still shown.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        cl = getattr(response, "context_data", {}).get("cl")
        if cl is not None:
            # One aggregate over exactly the rows the filters and search select.
            total = cl.queryset.order_by().aggregate(**TOTALS)
            response.context_data["ledger_total"] = {
                "rows": total["rows"], "cost": f"{total['cost'] or 0:.6f}",
                "input": f"{total['input'] or 0:,}", "output": f"{total['output'] or 0:,}"}
        return response

    @admin.display(description="Time", ordering="created_at")
    def created_cell(self, obj):
        return format_html('<span class="nowrap">{}</span>',
                           f"{timezone.localtime(obj.created_at):%Y-%m-%d %H:%M:%S}")

    @admin.display(description="Key", ordering="key_name")
    def key_cell(self, obj):
        name = obj.key_name or obj.key_prefix or "—"
        return format_html('<span class="cut" title="{} ({}…)">{}</span>', name, obj.key_prefix,
                           name)

    @admin.display(description="Team", ordering="team_name")
    def team_cell(self, obj):
        return _cut(obj.team_name)

    @admin.display(description="Model", ordering="public_model")
    def model_cell(self, obj):
        return _cut(obj.public_model)

    @admin.display(description="Provider", ordering="provider_name")
    def provider_cell(self, obj):
        return _cut(obj.provider_name)

    @admin.display(description="Latency (ms)", ordering="latency_ms")
    def latency_cell(self, obj):
        return f"{obj.latency_ms:,}"

    @admin.display(description="Tokens in / out")
    def tokens_cell(self, obj):
        return f"{obj.input_tokens:,} / {obj.output_tokens:,}"

    @admin.display(description="Cost (USD)", ordering="cost_usd")
    def cost_cell(self, obj):
        return f"{obj.cost_usd:.6f}"
