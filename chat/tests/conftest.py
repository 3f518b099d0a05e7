"""Fixtures of the chat and task tests: signed-in chat users (an httpx client with the session
and CSRF cookies of a real sign-in), tasks written through the config services, an SSE
reader for the JSON-event streams, models whose circuits a test opens, and the browser tests'
page (1366 px wide) and screenshots (var/screenshots/<test>-<width>.png)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

PASSWORD = "correct-horse-battery"
WIDE = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def screenshots(page, request):
    """`screenshots()`: the page as it is now, at 1366 and then 390 px wide, saved as
    var/screenshots/<test name>-1366.png and -390.png; the page is left at its former size."""
    from django.conf import settings

    folder = Path(settings.BASE_DIR) / "var" / "screenshots"

    def take() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        before = page.viewport_size
        for size in (WIDE, PHONE):
            page.set_viewport_size(size)
            page.screenshot(path=str(folder / f"{request.node.name}-{size['width']}.png"),
                            full_page=True)
        page.set_viewport_size(before)

    return take


@pytest.fixture
def circuit_providers(fake_upstream, transactional_db):
    """Three providers on the fake upstream whose circuits open after 2 consecutive failures:
    `gpt-test` is served by fake-a and fake-b, `gpt-ok` by fake-c, and `gpt-mixed` by fake-a
    first (priority 0) with fake-c as its fallback (priority 1)."""
    from providers.config_file import config_parse
    from providers.models import Provider
    from providers.services import config_apply, config_version_bump

    config_apply(spec=config_parse(f"""
providers:
  - name: fake-a
    kind: openai
    base_url: {fake_upstream.base_url("fake-a")}
    api_key: sk-fake-upstream-secret-a
    models:
      gpt-test: up-gpt
      gpt-mixed: up-gpt
  - name: fake-b
    kind: openai
    base_url: {fake_upstream.base_url("fake-b")}
    api_key: sk-fake-upstream-secret-b
    models:
      gpt-test: up-gpt
  - name: fake-c
    kind: openai
    base_url: {fake_upstream.base_url("fake-c")}
    api_key: sk-fake-upstream-secret-c
    models:
      gpt-ok: up-gpt
      gpt-mixed: {{upstream: up-gpt, priority: 1}}
prices:
  - model: up-gpt
    input: "1.00"
    output: "2.00"
"""))
    Provider.objects.update(breaker_failures=2)
    config_version_bump()
    return fake_upstream


def circuits(base_url: str) -> dict[tuple[str, str], str]:
    """(provider, public model) -> circuit state, as GET /health/detailed reports them."""
    providers = httpx.get(f"{base_url}/health/detailed", timeout=10).json()["providers"]
    return {(name, route["public_model"]): route["circuit"]
            for name, entry in providers.items() for route in entry["routes"]}


def circuits_open(base_url: str, api_key: str, fake, *, failing: tuple[str, ...],
                  model: str, requests: int) -> list[int]:
    """Make the `failing` fake providers answer 500 and send `requests` API calls for `model`:
    each failure counts against its route's breaker. Returns the statuses the client got."""
    for name in failing:
        fake.behave(name, status=500)
    return [httpx.post(f"{base_url}/v1/chat/completions", timeout=20,
                       headers={"authorization": f"Bearer {api_key}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
                       ).status_code for _ in range(requests)]


@pytest.fixture(autouse=True)
def _fresh_task_table():
    """Test databases reuse ids and versions; the live server's task table must not leak."""
    from tasks.cache import task_cache

    task_cache.invalidate()
    yield
    task_cache.invalidate()


@pytest.fixture
def make_user(transactional_db):
    from django.contrib.auth import get_user_model

    def make(username: str = "alice"):
        return get_user_model().objects.create_user(username, f"{username}@example.test", PASSWORD)

    return make


def sign_in(base_url: str, username: str) -> httpx.Client:
    """An httpx client signed in through the chat's own login form, sending the CSRF token."""
    client = httpx.Client(base_url=base_url, timeout=20)
    page = client.get("/chat/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post("/chat/login/", data={"username": username, "password": PASSWORD,
                                                  "csrfmiddlewaretoken": token, "next": "/chat/"})
    assert response.status_code == 302, response.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


@pytest.fixture
def chat_client(gateway_url, make_user):
    make_user("alice")
    client = sign_in(gateway_url, "alice")
    yield client
    client.close()


def sse_events(response: httpx.Response) -> list[dict]:
    """Every `data:` payload of a finished SSE response, parsed."""
    return [json.loads(line[5:].strip()) for line in response.text.split("\n")
            if line.startswith("data:")]


@pytest.fixture
def make_task(transactional_db):
    """`make_task(slug, model=…, keys=[ApiKey…], **TaskSpec fields)`, written like
    gateway_apply writes it (so running servers reload it)."""
    from providers.config_file import ConfigSpec
    from providers.services import config_apply, config_version_bump
    from tasks.config_file import TaskSpec
    from tasks.models import Task

    def make(slug: str, *, keys=(), **fields):
        fields.setdefault("model", "gpt-test")
        fields.setdefault("system_prompt", "You are a careful reviewer.")
        config_apply(spec=ConfigSpec(providers=(), prices=(),
                                     sections={"tasks": (TaskSpec(slug=slug, **fields),)}))
        task = Task.objects.get(slug=slug)
        if keys:
            task.allowed_keys.set(keys)
            config_version_bump()
        return task

    return make
