"""The routing file's `tasks:` section: applied, exported, pruned, and its errors."""
from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import CommandError, call_command

from providers.config_file import ConfigError, config_parse
from providers.models import Team
from tasks.models import Task


def _apply(tmp_path, text, *args) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out = io.StringIO()
    call_command("gateway_apply", str(path), *args, stdout=out)
    return out.getvalue()


def _export() -> str:
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    return out.getvalue()


TASKS = """
providers:
  - name: local
    kind: mock
    models:
      demo: mock-echo
tasks:
  - slug: risk_check
    model: demo
    description: Flags risky payments
    system_prompt: "You are a risk reviewer for {team}."
    max_tokens: 600
    temperature: 0.2
    output_schema:
      type: object
      required: [risk]
      properties:
        risk: {enum: [low, high]}
    teams: [finance]
  - slug: summary
    model: demo
    system_prompt: Summarise.
"""


@pytest.mark.django_db
def test_tasks_are_applied_exported_and_round_trip(tmp_path):
    Team.objects.create(name="finance")
    _apply(tmp_path, TASKS)
    risk = Task.objects.get(slug="risk_check")
    assert (risk.model, risk.max_tokens, risk.temperature) == ("demo", 600, 0.2)
    assert risk.system_prompt == "You are a risk reviewer for {team}."
    assert risk.output_schema == {"type": "object", "required": ["risk"],
                                  "properties": {"risk": {"enum": ["low", "high"]}}}
    assert [t.name for t in risk.allowed_teams.all()] == ["finance"]
    summary = Task.objects.get(slug="summary")
    assert (summary.max_tokens, summary.temperature, summary.output_schema) == (1024, None, None)
    exported = _export()
    assert yaml.safe_load(exported)["tasks"][0] == {
        "slug": "risk_check", "model": "demo", "description": "Flags risky payments",
        "system_prompt": "You are a risk reviewer for {team}.", "max_tokens": 600,
        "temperature": 0.2, "output_schema": risk.output_schema, "teams": ["finance"]}
    _apply(tmp_path, exported)
    assert Task.objects.count() == 2
    assert _export() == exported


@pytest.mark.django_db
def test_prune_deletes_tasks_only_when_the_file_has_a_tasks_section(tmp_path):
    Team.objects.create(name="finance")
    _apply(tmp_path, TASKS)
    providers_only = "providers:\n  - name: local\n    kind: mock\n    models:\n      demo: mock-echo\n"
    _apply(tmp_path, providers_only, "--prune")
    assert Task.objects.count() == 2
    _apply(tmp_path, providers_only + "tasks:\n  - slug: summary\n    model: demo\n", "--prune")
    assert list(Task.objects.values_list("slug", flat=True)) == ["summary"]


@pytest.mark.django_db
def test_task_with_an_unknown_team_is_refused(tmp_path):
    with pytest.raises(CommandError, match="tasks: risk_check: unknown team"):
        _apply(tmp_path, TASKS)
    assert not Task.objects.exists()


@pytest.mark.parametrize("text, message", [
    ("tasks:\n  - model: demo\n", r"line 2: tasks\[0\]\.slug: is required"),
    ("tasks:\n  - slug: Bad Slug\n    model: demo\n", r"line 2: tasks\[0\]\.slug: must be a slug"),
    ("tasks:\n  - slug: a\n", r"line 2: tasks\[0\]\.model: is required"),
    ("tasks:\n  - slug: a\n    model: m\n    max_tokens: 0\n", r"tasks\[0\]\.max_tokens: must be >= 1"),
    ("tasks:\n  - slug: a\n    model: m\n    temperature: 3\n", r"tasks\[0\]\.temperature: must be a number from 0 to 2"),
    ("tasks:\n  - slug: a\n    model: m\n    colour: red\n", r"tasks\[0\]\.colour: unknown field"),
    ("tasks:\n  - slug: a\n    model: m\n  - slug: a\n    model: m\n", r"duplicate slug\(s\): a"),
    ("tasks:\n  - slug: a\n    model: m\n    output_schema:\n      type: thing\n",
     r"line 5: tasks\[0\]\.output_schema: \$\.type: must be one of"),
    ("tasks:\n  - slug: a\n    model: m\n    output_schema:\n      $ref: '#/x'\n",
     r"line 5: tasks\[0\]\.output_schema: \$\.\$ref: cannot be resolved within the schema"),
    ("tasks:\n  - slug: a\n    model: m\n    output_schema:\n      requried: [x]\n",
     r"line 5: tasks\[0\]\.output_schema: \$\.requried: unsupported keyword"),
    ("tasks:\n  - slug: a\n    model: m\n    teams: finance\n", r"tasks\[0\]\.teams: must be a list"),
    ("tasks: risk_check\n", r"line 1: tasks: must be a list"),
])
def test_bad_tasks_name_the_line_and_field(text, message):
    with pytest.raises(ConfigError, match=message):
        config_parse(text, environ={})


def test_providers_never_imports_tasks_or_chat():
    """The `tasks:` section reaches providers through TasksConfig.config_sections() only."""
    import ast
    from pathlib import Path

    import providers

    for path in Path(providers.__file__).parent.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("tasks", "chat")], path
