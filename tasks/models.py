"""Admin-defined prompt endpoints (/api/tasks/<slug>)."""
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class TaskQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)


class Task(models.Model):
    """A named prompt endpoint: POST /api/tasks/<slug> with `{"input": …, "variables": {…}}`.

    `system_prompt` is a template: `{name}` is replaced by `variables["name"]`, `{{` and `}}`
    are literal braces. With `output_schema` the answer must be JSON matching it (JSON Schema,
    draft 2020-12; tasks.schema). No allowed keys and no allowed teams: every key may call it.
    """

    slug = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=300, blank=True)
    model = models.CharField(max_length=200, help_text="Public model name, as clients send it.")
    system_prompt = models.TextField(
        blank=True, help_text="{name} is replaced by the request's variables; {{ }} are literal braces.")
    max_tokens = models.PositiveIntegerField(default=1024, validators=[MinValueValidator(1)])
    temperature = models.FloatField(null=True, blank=True,
                                    validators=[MinValueValidator(0), MaxValueValidator(2)])
    output_schema = models.JSONField(
        null=True, blank=True, help_text="Optional JSON Schema (draft 2020-12) the output must match.")
    allowed_keys = models.ManyToManyField("providers.ApiKey", blank=True, related_name="tasks")
    allowed_teams = models.ManyToManyField("providers.Team", blank=True, related_name="tasks")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug
