"""Task, moved from the chat app: chat 0002 renamed its tables (chat_task -> tasks_task and the
two access lists); here the model enters the tasks app's state, and its content type moves
with it so that permissions and admin history stay attached. On a fresh database the same
two steps create the tables."""
import django.core.validators
from django.db import migrations, models


def content_type_move(apps, schema_editor, old="chat", new="tasks"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label=new, model="task").exists():
        ContentType.objects.using(db).filter(app_label=old, model="task").update(app_label=new)


def content_type_move_back(apps, schema_editor):
    content_type_move(apps, schema_editor, old="tasks", new="chat")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("chat", "0002_move_task_to_tasks"),
        ("providers", "0003_provider_translation"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Task",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("slug", models.SlugField(max_length=64, unique=True)),
                        ("description", models.CharField(blank=True, max_length=300)),
                        ("model", models.CharField(help_text="Public model name, as clients send it.", max_length=200)),
                        ("system_prompt", models.TextField(blank=True, help_text="{name} is replaced by the request's variables; {{ }} are literal braces.")),
                        ("max_tokens", models.PositiveIntegerField(default=1024, validators=[django.core.validators.MinValueValidator(1)])),
                        ("temperature", models.FloatField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(2)])),
                        ("output_schema", models.JSONField(blank=True, help_text="Optional JSON Schema (draft 2020-12) the output must match.", null=True)),
                        ("enabled", models.BooleanField(default=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("allowed_keys", models.ManyToManyField(blank=True, related_name="tasks", to="providers.apikey")),
                        ("allowed_teams", models.ManyToManyField(blank=True, related_name="tasks", to="providers.team")),
                    ],
                    options={
                        "ordering": ["slug"],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_type_move, content_type_move_back),
    ]
