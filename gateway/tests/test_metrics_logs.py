"""/metrics (counts add up across worker processes) and logs that never hold a secret."""
from __future__ import annotations

import logging
import re

import httpx
import pytest

from gateway.logs import JsonFormatter, MaskingFormatter


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _chat(url: str, key: str, model: str = "demo") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=20)


def test_metrics_count_requests_tokens_and_state(gateway_url, demo_key, make_key):
    before = httpx.get(f"{gateway_url}/metrics").text
    for _ in range(7):
        assert _chat(gateway_url, demo_key).status_code == 200
    make_key(name="capped", budget_usd=2)
    text = httpx.get(f"{gateway_url}/metrics").text
    labels = {"surface": "openai.chat", "model": "demo", "provider": "mock", "status": "ok"}
    assert _metric(text, "gateway_requests_total", **labels) - _metric(before, "gateway_requests_total", **labels) == 7
    assert _metric(text, "gateway_tokens_total", type="input") > _metric(before, "gateway_tokens_total", type="input")
    assert 'gateway_circuit_open{provider="mock",route="demo"} 0' in text
    assert 'gateway_provider_up{provider="mock"} 1' in text
    assert re.search(r'gateway_budget_remaining_usd\{scope="key:gw-[^"]+"\} 2\.0', text)
    assert "gateway_request_duration_seconds_bucket" in text
    assert not re.search(r"req_[0-9a-f]{32}", text)  # no unbounded labels


def test_metrics_token_protects_the_endpoint(gateway_url, settings):
    settings.GATEWAY_METRICS_TOKEN = "scrape-secret"
    assert httpx.get(f"{gateway_url}/metrics").status_code == 401
    ok = httpx.get(f"{gateway_url}/metrics", headers={"authorization": "Bearer scrape-secret"})
    assert ok.status_code == 200 and "gateway_requests_total" in ok.text


def test_two_worker_processes_add_up(gateway_url, demo_key, spawn_gateway, tmp_path):
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    first, second = spawn_gateway(**shared), spawn_gateway(**shared)
    for _ in range(5):
        assert _chat(first, demo_key).status_code == 200
    for _ in range(3):
        assert _chat(second, demo_key).status_code == 200
    labels = {"surface": "openai.chat", "model": "demo", "provider": "mock", "status": "ok"}
    for url in (first, second):
        assert _metric(httpx.get(f"{url}/metrics").text, "gateway_requests_total", **labels) == 8


@pytest.mark.parametrize("formatter", [MaskingFormatter("%(message)s"), JsonFormatter()])
def test_formatters_mask_keys_that_slip_into_messages(formatter):
    record = logging.makeLogRecord({"msg": "upstream said: bad key sk-ant-abcdefghijklmnop and gw-zyxwvutsrqpon, "
                                           "Authorization: Bearer abcdefghijkl"})
    line = formatter.format(record)
    for secret in ("abcdefghijklmnop", "zyxwvutsrqpon", "abcdefghijkl"):
        assert secret not in line


def test_logs_and_error_bodies_never_hold_secrets(gateway_url, fake_provider, api_key, make_key, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = []
    bodies.append(_chat(gateway_url, "gw-this-is-not-a-real-key-123456").text)
    broke = make_key(name="broke", budget_usd="0.000001")
    bodies.append(_chat(gateway_url, broke, "gpt-test").text)
    fake_provider.behave("fake-a", status=401, error_message="Incorrect API key provided: sk-fake-upstream-secret-a")
    bodies.append(_chat(gateway_url, api_key, "gpt-test").text)
    fake_provider.behave("fake-a", status=500, error_message="boom sk-fake-upstream-secret-a")
    bodies.append(_chat(gateway_url, api_key, "gpt-test").text)
    formatted = "\n".join(MaskingFormatter("%(message)s").format(r) for r in caplog.records)
    json_lines = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (api_key, broke, "sk-fake-upstream-secret-a", "gw-this-is-not-a-real-key-123456"):
        for text in bodies + [formatted, json_lines]:
            assert secret not in text
    assert any(getattr(r, "key_prefix", "") == api_key[:10] for r in caplog.records)


def test_state_gauges_parse_as_prometheus_text_with_escaped_labels():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.metrics import GatewayState, GatewayStateCollector

    registry = CollectorRegistry()
    registry.register(GatewayStateCollector(GatewayState(
        circuits=(("a", 'odd "model"\n', True), ("a", "m", False), ("b", "m", True)),
        budgets=(("team:R&D \\ ops", 1.5),))))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert [(s.labels, s.value) for s in families["gateway_circuit_open"].samples] == [
        ({"provider": "a", "route": 'odd "model"\n'}, 1), ({"provider": "a", "route": "m"}, 0),
        ({"provider": "b", "route": "m"}, 1)]
    assert [(s.labels["provider"], s.value) for s in families["gateway_provider_up"].samples] == [
        ("a", 1), ("b", 0)]
    [budget] = families["gateway_budget_remaining_usd"].samples
    assert (budget.labels, budget.value) == ({"scope": "team:R&D \\ ops"}, 1.5)
