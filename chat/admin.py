"""Admin for chat accounts. A user's chat limits (budget, models, rate limits) are set on their
key: the chat account links to it."""
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from chat.models import ChatAccount


@admin.register(ChatAccount)
class ChatAccountAdmin(admin.ModelAdmin):
    """Accounts are created on a user's first chat; edit limits on the linked key."""

    list_display = ["user", "key_link", "created_at"]
    search_fields = ["user__username", "api_key__name", "api_key__prefix"]
    readonly_fields = ["user", "key_link", "created_at"]
    fields = ["user", "key_link", "created_at"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="API key (budget, models, limits)")
    def key_link(self, obj):
        url = reverse("admin:providers_apikey_change", args=[obj.api_key_id])
        return format_html('<a href="{}">{}</a>', url, obj.api_key)
