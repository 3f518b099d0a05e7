"""The ledger in the admin: read-only, filterable, never deleted."""
from django.contrib import admin

from usage.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "key_prefix", "public_model", "provider_name",
                    "status", "input_tokens", "output_tokens", "cost_usd", "latency_ms"]
    list_filter = ["status", "surface", "provider_name", "usage_source"]
    search_fields = ["request_id", "client_request_id", "key_prefix", "public_model"]
    date_hierarchy = "created_at"
    # A COUNT(*) of a large ledger on every page is slow; filtered counts are still shown.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
