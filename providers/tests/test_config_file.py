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


def test_every_problem_is_reported_on_its_own_line():
    text = ("providers:\n  - name: x\n    kind: nope\n    weight: true\n"
            "  - name: y\n    kind: mock\n    models:\n      a: {upstream: b, weight: -1}\n"
            "prices:\n  - model: m\n    input: '1'\n")
    with pytest.raises(ConfigError) as error:
        config_parse(text, environ={})
    lines = str(error.value).splitlines()
    assert lines[0].startswith("line 2: providers[0].kind: must be one of openai")
    assert lines[1:] == ["line 2: providers[0].weight: must be an integer",
                         "line 8: providers[1].models.a.weight: must be >= 0",
                         "line 10: prices[0].output: is required"]


def test_a_minimal_file_gets_the_documented_defaults():
    spec = config_parse("providers:\n  - name: local\n    kind: mock\n    models:\n      demo: echo\n"
                        "prices:\n  - model: echo\n    input: 0.15\n    output: 1\n", environ={})
    [p] = spec.providers
    assert (p.base_url, p.api_key, p.weight, p.priority, p.enabled, p.timeout_s, p.max_inflight,
            p.extra_headers, p.translation) == ("", None, 1, 0, True, 600.0, 512, {}, {})
    assert [(r.public_model, r.upstream_model, r.weight, r.priority) for r in p.routes] == [
        ("demo", "echo", None, None)]
    [price] = spec.prices
    assert (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok,
            price.effective_from) == (Decimal("0.15"), Decimal("1"), None, None)
    assert spec.sections == {}
