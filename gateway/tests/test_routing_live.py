"""Routing through a live gateway: proportions, failover, circuit breakers, live edits."""
from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from providers.config_file import config_parse
from providers.models import ModelRoute, Provider
from providers.services import config_apply

BODY = {"model": "wrr", "messages": [{"role": "user", "content": "hi"}]}


def _post(url: str, key: str, body: dict = BODY) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=20)


def _mock_providers(weights: dict[str, int]) -> None:
    config_apply(spec=config_parse("providers:\n" + "".join(
        f"  - name: {name}\n    kind: mock\n    weight: {weight}\n    models:\n      wrr: mock-{name}\n"
        for name, weight in weights.items())))


def test_600_requests_over_weights_3_2_1_land_300_200_100(gateway_url, api_key):
    _mock_providers({"p3": 3, "p2": 2, "p1": 1})
    seen = Counter(_post(gateway_url, api_key).headers["x-gateway-provider"] for _ in range(600))
    assert seen == {"p3": 300, "p2": 200, "p1": 100}


def test_weight_zero_drains_and_higher_priority_is_only_a_fallback(gateway_url, api_key, fake_upstream):
    config_apply(spec=config_parse(f"""
providers:
  - name: main
    kind: openai
    base_url: {fake_upstream.base_url("main")}
    models: {{wrr: up}}
  - name: drained
    kind: mock
    weight: 0
    models: {{wrr: mock}}
  - name: backup
    kind: mock
    priority: 1
    models: {{wrr: mock}}
"""))
    assert {_post(gateway_url, api_key).headers["x-gateway-provider"] for _ in range(10)} == {"main"}
    fake_upstream.behave("main", status=503)
    assert {_post(gateway_url, api_key).headers["x-gateway-provider"] for _ in range(3)} == {"backup"}


def _breaker_config(fake_upstream, cooldown_s: float) -> None:
    config_apply(spec=config_parse(f"""
providers:
  - name: flaky
    kind: openai
    base_url: {fake_upstream.base_url("flaky")}
    models: {{wrr: up-flaky}}
  - name: steady
    kind: openai
    base_url: {fake_upstream.base_url("steady")}
    models: {{wrr: up-steady}}
"""))
    Provider.objects.filter(name="flaky").update(breaker_failures=5, breaker_cooldown_s=cooldown_s)
    from django.db import transaction

    from providers.services import config_version_bump
    with transaction.atomic():
        config_version_bump()
    fake_upstream.behave("flaky", status=500)


@pytest.fixture
def wall_clock(monkeypatch):
    """Moves `time.time()` forward for the whole process, the live gateway's thread included:
    `advance(seconds)`. Breaker times are wall-clock times (shared through Redis across
    processes), so a cool-down ends exactly when the test says, however slow the machine."""
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def test_breaker_opens_after_5_failures_then_lets_one_probe_through(gateway_url, api_key, fake_upstream,
                                                                     wall_clock):
    # A cool-down far longer than the test's requests take, ended by the clock, not a sleep: a
    # loaded machine spent over 5 s on the first 30 requests, the cool-down ran out among them
    # and a probe made a 6th call.
    _breaker_config(fake_upstream, cooldown_s=60)
    for _ in range(30):
        assert _post(gateway_url, api_key).status_code == 200  # failover hides the failures
    assert len(fake_upstream.calls("flaky")) == 5
    wall_clock(30)
    assert _post(gateway_url, api_key).status_code == 200
    assert len(fake_upstream.calls("flaky")) == 5  # half-way through the cool-down: still open
    wall_clock(30.5)
    for _ in range(10):
        assert _post(gateway_url, api_key).status_code == 200
    # Exactly one half-open probe, which failed and reopened the circuit for twice as long.
    assert len(fake_upstream.calls("flaky")) == 6
    detail = httpx.get(f"{gateway_url}/health/detailed").json()
    flaky = detail["providers"]["flaky"]["routes"][0]
    assert flaky["circuit"] == "open" and flaky["last_error_class"] == "http_500"
    assert "sk-" not in httpx.get(f"{gateway_url}/health/detailed").text


def test_all_circuits_open_is_503_not_a_stampede(gateway_url, api_key, fake_upstream):
    config_apply(spec=config_parse(f"""
providers:
  - name: down
    kind: openai
    base_url: {fake_upstream.base_url("down")}
    models: {{wrr: up}}
"""))
    fake_upstream.behave("down", status=500)
    codes = [_post(gateway_url, api_key).status_code for _ in range(8)]
    assert codes[:5] == [502] * 5 and set(codes[5:]) == {503}
    assert len(fake_upstream.calls("down")) == 5
    response = _post(gateway_url, api_key)
    assert response.json()["error"]["code"] == "no_healthy_deployment"
    assert int(response.headers["retry-after"]) >= 1


def _served_by(url: str, key: str) -> str:
    return _post(url, key).headers["x-gateway-provider"]


def test_admin_edits_reach_a_running_server_within_2_seconds(gateway_url, api_key, monkeypatch):
    # The live gateway of the other tests checks the config version on every request
    # (conftest sets the poll interval to 0); this one polls as configured in gateway/settings.py.
    from gateway import settings as configured

    poll_s = configured.GATEWAY_CONFIG_POLL_S
    assert 0 < poll_s < 2, poll_s
    monkeypatch.setattr(settings, "GATEWAY_CONFIG_POLL_S", poll_s)
    _mock_providers({"left": 1, "right": 1})
    User = get_user_model()
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests-123")
    admin = Client()
    admin.force_login(User.objects.get(username="root"))
    left = Provider.objects.get(name="left")
    route = ModelRoute.objects.get(provider=left)
    form = {
        "name": "left", "kind": "mock", "base_url": "", "api_key": "", "weight": "1", "priority": "0",
        "timeout_s": "600", "max_inflight": "512", "breaker_failures": "5", "breaker_cooldown_s": "30",
        "extra_headers": "{}", "translation": "{}",
        "routes-TOTAL_FORMS": "1", "routes-INITIAL_FORMS": "1", "routes-MIN_NUM_FORMS": "0",
        "routes-MAX_NUM_FORMS": "1000", "routes-0-id": str(route.pk), "routes-0-provider": str(left.pk),
        "routes-0-public_model": "wrr", "routes-0-upstream_model": "mock-left", "routes-0-enabled": "on",
    }
    assert {_served_by(gateway_url, api_key) for _ in range(6)} == {"left", "right"}

    response = admin.post(f"/admin/providers/provider/{left.pk}/change/", form)  # enabled unticked
    assert response.status_code == 302, response.content[:2000]
    edited = time.monotonic()
    # Weights 1:1 alternate, so four in a row from `right` means `left` is gone.
    streak = 0
    while streak < 4 and time.monotonic() - edited < 2:
        streak = streak + 1 if _served_by(gateway_url, api_key) == "right" else 0
    assert streak == 4 and time.monotonic() - edited < 2
    assert {_served_by(gateway_url, api_key) for _ in range(10)} == {"right"}

    form.update({"enabled": "on", "weight": "3"})
    assert admin.post(f"/admin/providers/provider/{left.pk}/change/", form).status_code == 302
    edited = time.monotonic()
    while _served_by(gateway_url, api_key) != "left" and time.monotonic() - edited < 2:
        pass
    assert time.monotonic() - edited < 2
    # The whole edit took effect, not just the re-enabling: smooth WRR over weights 3:1 repeats
    # every 4 picks, so any 40 in a row are exactly 30 and 10.
    seen = Counter(_served_by(gateway_url, api_key) for _ in range(40))
    assert seen == {"left": 30, "right": 10}, seen


@pytest.mark.skipif(not settings.REDIS_URL, reason="shared circuit state needs REDIS_URL")
def test_breaker_state_is_shared_by_two_gateway_processes(gateway_url, api_key, fake_upstream,
                                                          spawn_gateway):
    _breaker_config(fake_upstream, cooldown_s=60)
    other = spawn_gateway()
    for _ in range(12):
        assert _post(gateway_url, api_key).status_code == 200
    assert len(fake_upstream.calls("flaky")) == 5
    for _ in range(12):
        assert _post(other, api_key).status_code == 200
    assert len(fake_upstream.calls("flaky")) == 5  # the other process saw the open circuit
