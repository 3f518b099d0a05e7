"""A forged Host header is refused on every path, in the calling surface's error shape; probes
named by GATEWAY_ANY_HOST_PATHS are answered whatever the Host."""
from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

EVIL = "evil.example.com"
CHAT = {"model": "mock-test", "messages": [{"role": "user", "content": "hi"}]}


def _post(url: str, path: str, key: str, body: dict, host: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    if host:
        headers["host"] = host
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=20)


def _openai_shape(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_host"
    return error


def test_a_forged_host_gets_400_in_each_surfaces_shape(gateway_url, mock_provider, api_key):
    chat = _post(gateway_url, "/v1/chat/completions", api_key, CHAT, host=EVIL)
    assert chat.status_code == 400
    _openai_shape(chat)

    messages = _post(gateway_url, "/v1/messages", api_key,
                     {**CHAT, "max_tokens": 10}, host=EVIL)
    assert messages.status_code == 400
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "invalid_request_error"

    task = _post(gateway_url, "/api/tasks/x", api_key, {"input": "x"}, host=EVIL)
    assert task.status_code == 400
    _openai_shape(task)

    for path in ("/health/detailed", "/metrics", "/v1/models"):
        response = httpx.get(f"{gateway_url}{path}", headers={"host": EVIL,
                                                                "authorization": f"Bearer {api_key}"})
        assert response.status_code == 400, path
        _openai_shape(response)

    # The same requests with the server's own Host are served.
    assert _post(gateway_url, "/v1/chat/completions", api_key, CHAT).status_code == 200
    assert _post(gateway_url, "/v1/messages", api_key, {**CHAT, "max_tokens": 10}).status_code == 200
    assert _post(gateway_url, "/api/tasks/x", api_key, {"input": "x"}).status_code == 404  # no such task
    assert httpx.get(f"{gateway_url}/health/detailed").status_code == 200


def test_the_sdks_see_a_forged_host_as_a_bad_request(gateway_url, mock_provider, api_key):
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0,
                           default_headers={"host": EVIL})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.code == "invalid_host"
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0,
                                 default_headers={"host": EVIL})
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(max_tokens=10, **CHAT)
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_liveness_answers_any_host_and_detailed_health_only_when_configured(gateway_url, settings):
    # Kubelets probe with the pod's IP as Host: /health is answered for any Host by default.
    assert httpx.get(f"{gateway_url}/health", headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert httpx.get(f"{gateway_url}/health", headers={"host": EVIL}).status_code == 200
    assert httpx.get(f"{gateway_url}/health/detailed", headers={"host": "10.1.2.3:8000"}).status_code == 400

    settings.GATEWAY_ANY_HOST_PATHS = ("/health", "/health/detailed")
    detailed = httpx.get(f"{gateway_url}/health/detailed", headers={"host": "10.1.2.3:8000"})
    assert detailed.status_code == 200 and "database" in detailed.json()

    settings.GATEWAY_ANY_HOST_PATHS = ()
    assert httpx.get(f"{gateway_url}/health", headers={"host": EVIL}).status_code == 400


def test_a_host_added_to_allowed_hosts_is_served_at_once(gateway_url, mock_provider, api_key, settings):
    assert _post(gateway_url, "/v1/chat/completions", api_key, CHAT, host="gw.example.com").status_code == 400
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, ".example.com"]
    assert _post(gateway_url, "/v1/chat/completions", api_key, CHAT, host="gw.example.com:443").status_code == 200
    assert _post(gateway_url, "/v1/chat/completions", api_key, CHAT, host="evil.example.org").status_code == 400


def test_forged_hosts_do_not_count_towards_the_key_lockout(gateway_url, mock_provider, api_key):
    codes = {_post(gateway_url, "/v1/chat/completions", f"gw-guess-{i}", CHAT, host=EVIL).status_code
             for i in range(40)}
    assert codes == {400}
    assert _post(gateway_url, "/v1/chat/completions", api_key, CHAT).status_code == 200


def test_the_compose_stack_names_its_hosts():
    from pathlib import Path

    import yaml
    from django.conf import settings

    compose = yaml.safe_load((Path(settings.BASE_DIR) / "docker-compose.yml").read_text())
    hosts = compose["services"]["web"]["environment"]["ALLOWED_HOSTS"]
    assert "*" not in hosts and "web" in hosts and hosts.startswith("${ALLOWED_HOSTS:-")
