"""Fixtures of the fault suite: a private MariaDB (one per session, migrated and configured
once), a private Redis per test, and gateway replicas as subprocesses. Skipped where the
machine has no mariadbd, redis-server or MySQL driver."""
from __future__ import annotations

import shutil
import uuid

import pytest

from gateway.tests.redis_server import RedisServer
from tests.faults.harness import DATABASE, MODEL, PROVIDER, MariaDB, Replicas, manage, operator_env

# USD per million tokens: the fake upstream reports 11 input and 7 output tokens, so a request
# costs exactly $0.018.
CONFIG = """
providers:
  - name: {provider}
    kind: openai
    base_url: {base_url}
    api_key: sk-fake-upstream-faults
    models:
      {model}: up-fault
prices:
  - model: up-fault
    input: "1000"
    output: "1000"
"""


@pytest.fixture(scope="session")
def faults_db(_fake_upstream_server, tmp_path_factory) -> MariaDB:
    """The suite's MariaDB: database `gw_faults` migrated, routing `gpt-fault` to the fake
    upstream's provider `faulty` (applied with `manage.py gateway_apply`)."""
    for tool in ("mariadbd", "mariadb-install-db"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    pytest.importorskip("MySQLdb", reason="the MySQL driver (requirements-prod.lock)")
    server = MariaDB()
    try:
        server.install()
        server.start()
        server.query(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 "
                     "COLLATE utf8mb4_unicode_ci", database=None)
        env = operator_env(server.url)
        manage("migrate", "--noinput", env=env, timeout=300)
        config = tmp_path_factory.mktemp("faults") / "gateway.yaml"
        config.write_text(CONFIG.format(provider=PROVIDER, model=MODEL,
                                        base_url=_fake_upstream_server.base_url(PROVIDER)))
        manage("gateway_apply", str(config), env=env)
        yield server
    finally:
        server.destroy()


@pytest.fixture
def faults_redis(request) -> RedisServer:
    """A private redis-server for one test; with AOF (as docker-compose.yml runs it) unless
    the test parametrizes this fixture with False."""
    server = RedisServer(appendonly=getattr(request, "param", True))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replicas(faults_db, faults_redis, fake_upstream, tmp_path) -> Replicas:
    """`replicas.start(n)` starts n gateways on the private database and Redis. Stopped (by
    PID) at teardown; a database a test left stopped or frozen is brought back for the next."""
    stage = Replicas(database_url=faults_db.url, redis_url=faults_redis.url, workdir=tmp_path)
    yield stage
    try:
        faults_redis.resume()  # a test that failed mid-pause must not stall the shutdown
    except ProcessLookupError:
        pass
    stage.stop()
    if not faults_db.running:
        faults_db.start()
    else:
        faults_db.resume()


@pytest.fixture
def key_name() -> str:
    """A name of this test's own for its keys (rows are found by it)."""
    return f"faults-{uuid.uuid4().hex[:10]}"
