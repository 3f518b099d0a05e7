"""Shared fixtures: the fake upstream (a real HTTP server), a live gateway (uvicorn serving the
real ASGI app on loopback), and routing configs written through the real services."""
from __future__ import annotations

import socket
import threading
import time
from decimal import Decimal

import pytest
import uvicorn

from gateway.tests.fake_upstream import FakeUpstream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _private_spool_dir(tmp_path_factory) -> None:
    """Each test run spools ledger rows in its own folder (runs may be concurrent)."""
    from django.conf import settings

    settings.GATEWAY_SPOOL_DIR = tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="session")
def _fake_upstream_server() -> FakeUpstream:
    fake = FakeUpstream()
    fake.start()
    return fake


@pytest.fixture
def fake_upstream(_fake_upstream_server: FakeUpstream) -> FakeUpstream:
    _fake_upstream_server.reset()
    yield _fake_upstream_server
    _fake_upstream_server.reset()


@pytest.fixture(scope="session")
def _live_gateway(django_db_setup) -> str:
    from django.conf import settings

    from gateway.asgi import application

    settings.GATEWAY_CONFIG_POLL_S = 0
    port = _free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live gateway did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def gateway_url(_live_gateway: str, transactional_db) -> str:
    """Base URL of a running gateway whose database is this test's (committed) database."""
    from django.conf import settings

    from gateway.clients import client_pool
    from providers.cache import key_cache, snapshot_cache

    # Test databases reuse ids, so routing state (breakers, WRR) from an earlier test must go.
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter("gw:*"))
        if keys:
            client.delete(*keys)
        client.close()
    client_pool.reset_routing_state()
    snapshot_cache.invalidate()
    key_cache.clear()
    from gateway.asgi import http_application

    http_application.reset()
    return _live_gateway


@pytest.fixture
def demo_key(transactional_db) -> str:
    """The `make run` demo config (mock provider behind `demo`); returns its raw API key."""
    from providers.services import demo_config_load

    return demo_config_load().api_key


@pytest.fixture
def fake_provider(fake_upstream: FakeUpstream, transactional_db):
    """Provider `fake-a` (kind openai) on the fake upstream, serving public `gpt-test` as
    upstream `up-gpt`, priced at 1.00 / 2.00 / 0.50 USD per million tokens."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: fake-a
    kind: openai
    base_url: {fake_upstream.base_url("fake-a")}
    api_key: sk-fake-upstream-secret-a
    models:
      gpt-test: up-gpt
prices:
  - model: up-gpt
    input: "1.00"
    output: "2.00"
    cached_input: "0.50"
"""))
    return fake_upstream


@pytest.fixture
def api_key(transactional_db) -> str:
    from providers.services import api_key_create

    return api_key_create(name="tests")[1]


@pytest.fixture
def make_key(transactional_db):
    from providers.services import api_key_create

    def make(**kwargs) -> str:
        kwargs.setdefault("name", "tests")
        if "budget_usd" in kwargs and kwargs["budget_usd"] is not None:
            kwargs["budget_usd"] = Decimal(str(kwargs["budget_usd"]))
        return api_key_create(**kwargs)[1]

    return make


@pytest.fixture
def fake_anthropic_provider(fake_upstream: FakeUpstream, transactional_db):
    """Provider `fake-anth` (kind anthropic) on the fake upstream, serving public `claude-test`
    as upstream `up-claude`, priced at 3.00 / 15.00 / 0.30 USD per million tokens."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: fake-anth
    kind: anthropic
    base_url: {fake_upstream.base_url("fake-anth")}
    api_key: sk-ant-fake-upstream-secret
    models:
      claude-test: up-claude
prices:
  - model: up-claude
    input: "3.00"
    output: "15.00"
    cached_input: "0.30"
"""))
    return fake_upstream


@pytest.fixture
def mock_provider(transactional_db):
    """Provider `mock-m` (kind mock, offline) serving public `mock-test` as upstream
    `mock-echo`, priced at 0.15 / 0.60 USD per million tokens."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse("""
providers:
  - name: mock-m
    kind: mock
    models:
      mock-test: mock-echo
prices:
  - model: mock-echo
    input: "0.15"
    output: "0.60"
"""))


@pytest.fixture
def ledger_rows(transactional_db):
    """`ledger_rows(n)`: the ledger's rows, oldest first, once there are at least n (rows of
    streams are written as the stream ends, so they may trail the client by a moment)."""
    from usage.models import UsageRecord

    def wait(count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = list(UsageRecord.objects.order_by("created_at"))
            if len(rows) >= count:
                return rows
            time.sleep(0.05)
        return list(UsageRecord.objects.order_by("created_at"))

    return wait


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(monkeypatch):
    """Headless Debian Chromium driven by Playwright (no downloaded browser). Skipped where the
    machine has no Chromium; CI installs it (.ci/run). Function-scoped: while Playwright's sync
    API is up it runs an event loop in this thread, which must be gone before other tests use
    asyncio."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    # The test's own ORM calls are still plain synchronous code under that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def spawn_gateway(gateway_url):
    """Start extra gateway processes (uvicorn subprocesses) on this test's database and Redis;
    returns a function(env overrides) -> base URL. Stopped at teardown."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx
    from django.conf import settings

    from gateway.tests.loopback import this_database_url

    database_url = this_database_url()
    processes = []

    def spawn(**env_overrides: str) -> str:
        port = _free_port()
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": settings.REDIS_URL,
               "DEBUG": "1", "GATEWAY_CONFIG_POLL_S": "0", **env_overrides}
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "gateway.asgi:application", "--port", str(port),
             "--log-level", "warning", "--timeout-graceful-shutdown", "30"],
            cwd=Path(settings.BASE_DIR), env=env)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                return url
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gateway process did not start")
                time.sleep(0.1)

    spawn.processes = processes
    yield spawn
    for process in processes:
        process.terminate()
        process.wait(30)
