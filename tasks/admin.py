"""Admin for tasks. Saves bump the config version, so running servers reload the task table
within ~1 s (tasks.cache); an output schema is checked (tasks.schema) before it is saved."""
from django import forms
from django.contrib import admin

from providers.admin import BumpsConfigVersion
from tasks.models import Task
from tasks.schema import schema_check


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
