"""Production settings: refuse unsafe defaults, pass `check --deploy`, shut down gracefully."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from django.conf import settings

from usage.models import UsageRecord

PROD = {"DEBUG": "0", "SECRET_KEY": "p" * 20 + "-production-secret-key-of-decent-length-" + "q" * 20,
        "GATEWAY_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "ALLOWED_HOSTS": "gateway.example.com",
        "SECURE_HSTS_PRELOAD": "1"}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("DEBUG", "SECRET_KEY", "GATEWAY_ENCRYPTION_KEYS", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=Path(settings.BASE_DIR),
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_no_warnings_as_configured_in_the_readme():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PROD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_the_development_secret_key_or_no_encryption_key():
    no_secret = _manage("check", **{**PROD, "SECRET_KEY": ""})
    assert no_secret.returncode != 0 and "SECRET_KEY must be set" in no_secret.stderr
    assert "Traceback" not in no_secret.stderr.splitlines()[-1]
    no_keys = _manage("check", **{**PROD, "GATEWAY_ENCRYPTION_KEYS": ""})
    assert no_keys.returncode != 0 and "GATEWAY_ENCRYPTION_KEYS" in no_keys.stderr


def test_sigterm_lets_an_in_flight_stream_finish_and_its_row_land(spawn_gateway, fake_provider, api_key):
    fake_provider.behave("fake-a", reply="one two three four five six seven eight", chunk_delay_s=0.25)
    url = spawn_gateway()
    process = spawn_gateway.processes[-1]
    received: list[str] = []
    streaming = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {api_key}"},
                          json={"model": "gpt-test", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as response:
            for line in response.iter_lines():
                received.append(line)
                if '"content":"one"' in line:
                    streaming.set()

    client = threading.Thread(target=stream)
    client.start()
    # The stream is under way (its first word arrived, ~2 s of it left) when the signal comes.
    assert streaming.wait(20)
    process.send_signal(signal.SIGTERM)
    client.join(30)
    assert received.count("data: [DONE]") == 1
    process.wait(30)
    row = UsageRecord.objects.get()
    assert (row.status, row.output_tokens, row.usage_source) == ("ok", 7, "reported")


COMPOSE_FILE = Path(settings.BASE_DIR) / "docker-compose.yml"


def test_compose_file_describes_the_production_stack():
    import yaml

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == {"db", "redis", "migrate", "web", "worker", "beat"}
    assert services["db"]["image"].startswith("mysql:8")
    for name in ("db", "redis", "web"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["db"] == {"condition": "service_healthy"}
    web = services["web"]
    # Several workers: their /metrics must be aggregated.
    assert "--workers" in " ".join(web["command"]) and web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert web["environment"]["REDIS_URL"] and web["environment"]["DATABASE_URL"].startswith("mysql://")


def test_compose_tool_accepts_the_compose_file(tmp_path):
    import shutil

    tool = (["docker-compose"] if shutil.which("docker-compose") else
            ["docker", "compose"] if shutil.which("docker") and subprocess.run(
                ["docker", "compose", "version"], capture_output=True).returncode == 0 else None)
    if tool is None:
        pytest.skip("no compose tool installed (.ci/run installs Debian's docker-compose)")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("SECRET_KEY=x\nGATEWAY_ENCRYPTION_KEYS=y\n")
    checked = subprocess.run([*tool, "config", "-q"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
