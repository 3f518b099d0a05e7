"""Fixtures of the chat and task tests: signed-in chat users (an httpx client with the session
and CSRF cookies of a real sign-in), tasks written through the config services, and an SSE
reader for the JSON-event streams."""
from __future__ import annotations

import json
import re

import httpx
import pytest

PASSWORD = "correct-horse-battery"


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
