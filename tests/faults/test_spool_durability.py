"""Rows spooled during a database outage survive a Redis restart in the middle of it.

The spool keeps a row in Redis only when Redis runs with an append-only file (it reloads the list
after a restart); otherwise in an fsync'ed file on the replica's disk (usage/spool.py). Both
arrangements are run: SIGKILL Redis while the database is stopped, start it again from the
same directory, and bring the database back. Every request's row lands exactly once."""
from __future__ import annotations

from collections import Counter

import pytest
import redis
import yaml

from tests.faults.harness import REPO, create_api_key, wait_until
from tests.faults.traffic import burst, ledger_rows

SPOOL_KEY = "gw:ledger:spool"


@pytest.mark.parametrize("faults_redis", [True, False], indirect=True,
                         ids=["redis-appendonly", "redis-without-persistence"])
def test_spooled_rows_survive_a_redis_restart_during_a_database_outage(
        replicas, faults_db, faults_redis, key_name):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    client = redis.Redis.from_url(faults_redis.url)

    def spooled() -> tuple[int, int]:
        """(rows in the Redis list, rows in the replicas' spool files)"""
        try:
            in_redis = client.llen(SPOOL_KEY)
        except redis.RedisError:
            in_redis = -1
        return in_redis, replicas.spooled_on_disk()

    before = burst(urls, key, 10)
    wait_until(lambda: len(ledger_rows(faults_db, key_name)) == 10, timeout=10,
               what="10 rows before the outage")

    faults_db.stop()
    during = burst(urls, key, 20)
    expected = (20, 0) if faults_redis.appendonly else (0, 20)
    wait_until(lambda: spooled() == expected, timeout=10, what=f"{expected} spooled")

    faults_redis.kill()
    faults_redis.start()
    assert spooled() == expected  # nothing spooled was lost with Redis
    after_restart = burst(urls, key, 10)  # the database is still down
    expected = (30, 0) if faults_redis.appendonly else (0, 30)
    wait_until(lambda: spooled() == expected, timeout=10, what=f"{expected} spooled")

    faults_db.start()
    answers = before + during + after_restart
    assert [a.status for a in answers] == [200] * 40
    rows = wait_until(lambda: (r := ledger_rows(faults_db, key_name)) and len(r) >= 40 and r,
                      timeout=20, what="40 rows after the outage")
    wait_until(lambda: spooled() == (0, 0), timeout=10, what="an empty spool")
    assert Counter(request_id for request_id, _, _ in ledger_rows(faults_db, key_name)) == \
        Counter(a.request_id for a in answers)
    assert {status for _, status, _ in rows} == {"ok"}
    client.close()


@pytest.mark.parametrize("faults_redis", [False], indirect=True, ids=["redis-without-persistence"])
def test_rows_spooled_by_killed_replicas_are_flushed_by_the_next_one(
        replicas, faults_db, faults_redis, key_name):
    """Both replicas SIGKILLed with their rows in spool files during a database outage; one file
    is renamed as a flusher killed mid-flush leaves it (`….flushing-<pid>-<token>`). A replica
    started after the database is back writes them all, once each."""
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    # A replica loads keys and routes on its first request (one that never reached the
    # database answers 500 during the outage: reported, not this test's subject).
    warm = burst(urls, key, 2)
    wait_until(lambda: len(ledger_rows(faults_db, key_name)) == 2, timeout=10, what="2 rows")
    faults_db.stop()
    during = burst(urls, key, 20)
    assert [a.status for a in warm + during] == [200] * 22
    wait_until(lambda: replicas.spooled_on_disk() == 20, timeout=10, what="20 rows in files")
    for url in urls:
        replicas.kill(url)
    files = sorted(replicas.spool_dir.glob("ledger-*.jsonl"))
    assert len(files) == 2
    files[0].rename(files[0].with_name(files[0].name + ".flushing-1-deadbeef"))

    faults_db.start()
    [url] = replicas.start(1)
    after = burst([url], key, 1)
    answers = warm + during + after
    rows = wait_until(lambda: (r := ledger_rows(faults_db, key_name)) and len(r) >= 23 and r,
                      timeout=20, what="23 rows")
    wait_until(lambda: replicas.spooled_on_disk() == 0, timeout=10, what="no spool file left")
    assert Counter(request_id for request_id, _, _ in ledger_rows(faults_db, key_name)) == \
        Counter(a.request_id for a in answers)
    assert [a.status for a in after] == [200] and len(rows) == 23


def test_the_compose_stack_keeps_redis_and_the_spool_files_on_volumes():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert "redis:/data" in services["redis"]["volumes"] and "redis" in volumes
    for name in ("web", "worker"):
        assert "spool:/app/var/spool" in services[name]["volumes"], name
