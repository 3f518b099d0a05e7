"""GATEWAY_LEDGER_JOURNAL: a finished request's row is journaled in Redis beside its intent and
the response ends then; the database commit follows. Caused here: the database frozen (SIGSTOP)
so that no commit can happen, requests answered anyway, then the worker SIGKILLed, and in the
second case Redis SIGKILLed too and restarted from its append-only file. Each time another
replica's reaper writes every answered request's one row from the journal: status `ok`, the
tokens the upstream reported (11 in, 7 out) and their cost, budgets settled once (without the
journal, the reaper would write `lost` rows with the prompt estimate, tests/faults/
test_crash_lost_rows.py)."""
from __future__ import annotations

from decimal import Decimal

import pytest
import redis

from tests.faults.harness import create_api_key, wait_until
from tests.faults.traffic import burst, ledger_rows
from usage.budgets_redis import ALL_SHARDS

JOURNAL = {"GATEWAY_LEDGER_JOURNAL": "1", "GATEWAY_REAPER_INTERVAL_S": "0.3",
           # The key and routing caches serve while the database is frozen (a poll would wait
           # for it inside a request).
           "GATEWAY_CONFIG_POLL_S": "600"}
ANSWERED = 6
COST = Decimal("0.018")  # 11 + 7 tokens at $1000 per million (tests/faults/conftest.py)


def _journal_left(client: redis.Redis) -> set[str]:
    return {i.decode() for shard in ALL_SHARDS
            for name in (shard.intents, shard.intent_final) for i in client.hkeys(name)}


def _rows(faults_db, *names: str) -> list[tuple[str, str, Decimal]]:
    return [row for name in names for row in ledger_rows(faults_db, name)]


@pytest.mark.parametrize("redis_killed_too", [False, True])
def test_answered_before_the_commit_and_the_worker_killed_every_row_lands_from_the_journal(
        replicas, faults_db, faults_redis, key_name, redis_killed_too):
    budgeted = create_api_key(key_name, "--budget-usd", "10", env=replicas.env)
    free = create_api_key(f"{key_name}-free", env=replicas.env)
    [url] = replicas.start(1, **JOURNAL)
    # Each key's first request reads it (and its budget counter) from the database.
    warm = burst([url], budgeted, 1, stream_every=0) + burst([url], free, 1, stream_every=0)
    assert [a.status for a in warm] == [200, 200]
    wait_until(lambda: len(_rows(faults_db, key_name, f"{key_name}-free")) == 2, timeout=10,
               what="the warm-up rows")

    faults_db.pause()
    try:
        answered = (burst([url], budgeted, ANSWERED // 2, stream_every=2)
                    + burst([url], free, ANSWERED // 2, stream_every=2))
        assert [a.status for a in answered] == [200] * ANSWERED, replicas.logs()
        assert all(a.body.rstrip().endswith("[DONE]") for a in answered if "data:" in a.body)
        client = redis.Redis.from_url(faults_redis.url)
        journaled = {a.request_id for a in answered}
        assert journaled <= _journal_left(client)
        replicas.kill(url)
        if redis_killed_too:
            faults_redis.kill()
            faults_redis.start()  # the append-only file brings the journal back
            client = redis.Redis.from_url(faults_redis.url)
            assert journaled <= _journal_left(client)
    finally:
        faults_db.resume()

    replicas.start(1, **JOURNAL)  # its reaper takes the dead replica's journal after a lease
    rows = wait_until(
        lambda: (r := _rows(faults_db, key_name, f"{key_name}-free")) and len(r) >= 2 + ANSWERED
        and r, timeout=30, what="the journaled rows")
    assert len(rows) == 2 + ANSWERED
    by_id = {request_id: (status, cost) for request_id, status, cost in rows}
    assert {by_id[rid] for rid in journaled} == {("ok", COST)}
    details = faults_db.query(
        "SELECT input_tokens, output_tokens, usage_source, http_status FROM usage_usagerecord "
        "WHERE request_id IN ({})".format(", ".join(["%s"] * ANSWERED)), tuple(journaled))
    assert set(details) == {(11, 7, "reported", 200)}
    wait_until(lambda: not _journal_left(client), timeout=10, what="the journal emptied")

    key_id = faults_db.query("SELECT id FROM providers_apikey WHERE name = %s", (key_name,))[0][0]
    [(reserved, spent)] = faults_db.query(
        "SELECT reserved_units, spent_units FROM usage_budgetcounter "
        "WHERE scope = 'key' AND scope_id = %s", (key_id,))
    assert reserved == 0
    assert Decimal(spent) / 10 ** 10 == COST * (1 + ANSWERED // 2)

