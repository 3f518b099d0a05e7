"""gateway_apply / gateway_export: the declarative routing file (CONTRACT §3)."""
from __future__ import annotations

import io
from decimal import Decimal

import pytest
import yaml
from django.core.management import CommandError, call_command

from providers.config_file import ConfigError, config_parse
from providers.crypto import secret_decrypt
from providers.models import ModelRoute, Price, Provider

CONFIG = """
providers:
  - name: openai-main
    kind: openai
    base_url: https://api.openai.example/v1
    api_key: ${OPENAI_API_KEY}
    weight: 2
    priority: 0
    enabled: true
    timeout_s: 600
    max_inflight: 512
    models:
      gpt-4o-mini: gpt-4o-mini
      claude-sonnet: {upstream: kimi-k2.5, weight: 3, priority: 1}
  - name: local
    kind: mock
    models:
      demo: mock-echo
prices:
  - model: gpt-4o-mini
    provider: openai-main
    input: "0.15"
    output: "0.60"
    cached_input: "0.075"
  - model: kimi-k2.5
    input: ${KIMI_INPUT:-0.50}
    output: "2.00"
"""


def _apply(tmp_path, text, *args, monkeypatch=None):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out = io.StringIO()
    call_command("gateway_apply", str(path), *args, stdout=out)
    return out.getvalue()


def _export() -> str:
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_apply_upserts_and_encrypts_the_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    _apply(tmp_path, CONFIG)
    provider = Provider.objects.get(name="openai-main")
    assert provider.weight == 2 and provider.kind == "openai"
    assert "sk-live" not in provider.api_key_encrypted
    assert secret_decrypt(provider.api_key_encrypted) == "sk-live-abcdef123456"
    route = ModelRoute.objects.get(public_model="claude-sonnet")
    assert (route.upstream_model, route.effective_weight, route.effective_priority) == ("kimi-k2.5", 3, 1)
    assert ModelRoute.objects.get(public_model="gpt-4o-mini").effective_weight == 2
    kimi = Price.objects.get(upstream_model="kimi-k2.5")
    assert kimi.input_per_mtok == Decimal("0.50") and kimi.provider is None


@pytest.mark.django_db
def test_export_round_trips_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    _apply(tmp_path, CONFIG)
    exported = _export()
    assert "sk-live-abcdef123456" not in exported
    assert "${OPENAI_MAIN_API_KEY}" in exported
    data = yaml.safe_load(exported)
    assert data["prices"][0] == {"model": "gpt-4o-mini", "provider": "openai-main",
                                 "input": "0.15", "output": "0.6", "cached_input": "0.075"}
    monkeypatch.setenv("OPENAI_MAIN_API_KEY", "sk-live-abcdef123456")
    before = (Provider.objects.count(), ModelRoute.objects.count(), Price.objects.count())
    summary = _apply(tmp_path, exported)
    assert "prices: 0 added" in summary
    assert (Provider.objects.count(), ModelRoute.objects.count(), Price.objects.count()) == before
    assert _export() == exported


@pytest.mark.django_db
def test_changed_price_is_a_new_version_not_an_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    _apply(tmp_path, CONFIG)
    _apply(tmp_path, CONFIG.replace('input: "0.15"', 'input: "0.20"'))
    versions = Price.objects.filter(upstream_model="gpt-4o-mini").order_by("effective_from")
    assert [p.input_per_mtok for p in versions] == [Decimal("0.15"), Decimal("0.20")]


@pytest.mark.django_db
def test_prune_deletes_providers_missing_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    _apply(tmp_path, CONFIG)
    only_local = "providers:\n  - name: local\n    kind: mock\n    models:\n      demo: mock-echo\n"
    _apply(tmp_path, only_local)
    assert Provider.objects.count() == 2
    _apply(tmp_path, only_local, "--prune")
    assert list(Provider.objects.values_list("name", flat=True)) == ["local"]
    assert list(ModelRoute.objects.values_list("public_model", flat=True)) == ["demo"]


@pytest.mark.django_db
def test_routes_dropped_from_a_provider_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    _apply(tmp_path, CONFIG)
    _apply(tmp_path, CONFIG.replace("      claude-sonnet: {upstream: kimi-k2.5, weight: 3, priority: 1}\n", ""))
    assert not ModelRoute.objects.filter(public_model="claude-sonnet").exists()


def test_unset_variable_is_an_error_naming_it(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"line 6: environment variable OPENAI_API_KEY is not set"):
        config_parse(CONFIG)


def test_default_value_syntax(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("KIMI_INPUT", "0.99")
    spec = config_parse(CONFIG)
    assert spec.prices[1].input_per_mtok == Decimal("0.99")


@pytest.mark.parametrize("text, message", [
    ("providers:\n  - name: x\n    kind: nope\n", r"line 2: providers\[0\]\.kind: must be one of"),
    ("providers:\n  - name: Bad Name\n    kind: mock\n", r"line 2: providers\[0\]\.name: must be a slug"),
    ("providers:\n  - name: x\n    kind: openai\n", r"line 2: providers\[0\]\.base_url"),
    ("providers:\n  - name: x\n    kind: mock\n    weight: -1\n", r"providers\[0\]\.weight: must be >= 0"),
    ("providers:\n  - name: x\n    kind: mock\n    colour: red\n", r"providers\[0\]\.colour: unknown field"),
    ("prices:\n  - model: m\n    input: abc\n    output: '1'\n", r"line 2: prices\[0\]\.input: must be a decimal"),
    ("prices:\n  - model: m\n    input: '-1'\n    output: '1'\n", r"prices\[0\]\.input: must be a non-negative"),
    ("prices:\n  - model: m\n    input: '1'\n", r"prices\[0\]\.output: is required"),
    ("providers: [\n", r"invalid YAML"),
    ("widgets: []\n", r"unknown top-level field"),
])
def test_bad_files_name_the_line_and_field(text, message):
    with pytest.raises(ConfigError, match=message):
        config_parse(text, environ={})


@pytest.mark.django_db
def test_command_reports_errors_without_a_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  - name: x\n    kind: nope\n")
    with pytest.raises(CommandError, match="bad.yaml: line 2"):
        call_command("gateway_apply", str(path))
    assert not Provider.objects.exists()


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
    from chat.models import Task
    from providers.models import Team

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
    from chat.models import Task
    from providers.models import Team

    Team.objects.create(name="finance")
    _apply(tmp_path, TASKS)
    providers_only = "providers:\n  - name: local\n    kind: mock\n    models:\n      demo: mock-echo\n"
    _apply(tmp_path, providers_only, "--prune")
    assert Task.objects.count() == 2
    _apply(tmp_path, providers_only + "tasks:\n  - slug: summary\n    model: demo\n", "--prune")
    assert list(Task.objects.values_list("slug", flat=True)) == ["summary"]


@pytest.mark.django_db
def test_task_with_an_unknown_team_is_refused(tmp_path):
    from chat.models import Task

    with pytest.raises(CommandError, match="tasks: risk_check: unknown team"):
        _apply(tmp_path, TASKS)
    assert not Task.objects.exists()


@pytest.mark.parametrize("text, message", [
    ("tasks:\n  - model: demo\n", r"line 2: tasks\[0\]\.slug: must be a slug"),
    ("tasks:\n  - slug: Bad Slug\n    model: demo\n", r"line 2: tasks\[0\]\.slug: must be a slug"),
    ("tasks:\n  - slug: a\n", r"line 2: tasks\[0\]\.model: is required"),
    ("tasks:\n  - slug: a\n    model: m\n    max_tokens: 0\n", r"tasks\[0\]\.max_tokens: must be >= 1"),
    ("tasks:\n  - slug: a\n    model: m\n    temperature: 3\n", r"tasks\[0\]\.temperature: must be a number from 0 to 2"),
    ("tasks:\n  - slug: a\n    model: m\n    colour: red\n", r"tasks\[0\]\.colour: unknown field"),
    ("tasks:\n  - slug: a\n    model: m\n  - slug: a\n    model: m\n", r"duplicate slug\(s\): a"),
    ("tasks:\n  - slug: a\n    model: m\n    output_schema:\n      type: thing\n",
     r"line 5: tasks\[0\]\.output_schema: \$\.type: must be one of"),
    ("tasks:\n  - slug: a\n    model: m\n    output_schema:\n      $ref: '#/x'\n",
     r"tasks\[0\]\.output_schema: \$\.\$ref: unsupported keyword"),
    ("tasks:\n  - slug: a\n    model: m\n    teams: finance\n", r"tasks\[0\]\.teams: must be a list"),
    ("tasks: risk_check\n", r"line 1: tasks: must be a list"),
])
def test_bad_tasks_name_the_line_and_field(text, message):
    with pytest.raises(ConfigError, match=message):
        config_parse(text, environ={})
