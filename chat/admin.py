"""Admin for tasks and chat accounts. Task saves bump the config version, so running servers
reload the task table within ~1 s (chat.cache). A user's chat limits (budget, models, rate
limits) are set on their key: the chat account links to it."""
from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from chat.models import ChatAccount, Task
from chat.schema import schema_check
from providers.admin import BumpsConfigVersion


class TaskForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = ["slug", "description", "model", "system_prompt", "max_tokens", "temperature",
                  "output_schema", "allowed_keys", "allowed_teams", "enabled"]

    def clean_output_schema(self):
        schema = self.cleaned_data.get("output_schema")
        if schema is not None:
            problems = schema_check(schema)
            if problems:
                raise forms.ValidationError(problems[:5])
        return schema


@admin.register(Task)
class TaskAdmin(BumpsConfigVersion, admin.ModelAdmin):
    form = TaskForm
    list_display = ["slug", "model", "max_tokens", "temperature", "has_schema", "enabled"]
    list_filter = ["enabled", "model"]
    search_fields = ["slug", "description", "model"]
    filter_horizontal = ["allowed_keys", "allowed_teams"]

    @admin.display(boolean=True, description="JSON schema")
    def has_schema(self, obj):
        return obj.output_schema is not None


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
