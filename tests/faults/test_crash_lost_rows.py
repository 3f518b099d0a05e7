"""A replica SIGKILLed with streams in flight: every admitted request still gets exactly one
ledger row (`lost`, the prompt estimate), and its budget reservation is released, by the reaper
of another replica (usage.intents) within a few leases — not after the 30-minute TTL.

Each scenario runs with the intents in Redis (budgets reserved there: the intent is written by
the reservation's script; unbudgeted: its own pipelined write) and in the database (no Redis:
written in the budget reservation's transaction, or on its own). Replicas renew and reap every
0.3 s (a lease of 0.9 s)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from decimal import Decimal

import httpx
import pytest
import redis

from tests.faults.harness import PROVIDER, create_api_key, wait_until
from tests.faults.traffic import chat_body, ledger_rows
from usage.budgets_redis import ALL_SHARDS, intent_shard
from usage.intents import Intent

INTERVAL = {"GATEWAY_REAPER_INTERVAL_S": "0.3"}
STREAMS = 10


def _streams_in_background(url: str, keys: list[str], count: int) -> threading.Thread:
    """`count` streamed chat requests (keys taken in turn), sent from a thread of their own;
    they end, one way or another, when the replica answers or dies."""
    async def run() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i: int) -> None:
                try:
                    async with client.stream(
                            "POST", f"{url}/v1/chat/completions",
                            json=chat_body(stream=True, text=f"crash {i}"),
                            headers={"authorization": f"Bearer {keys[i % len(keys)]}"}) as r:
                        async for _ in r.aiter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # the replica was killed under it
            await asyncio.gather(*[one(i) for i in range(count)])

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread


def _intent_ids(faults_db, client: redis.Redis | None) -> set[str]:
    ids = {row[0] for row in faults_db.query("SELECT request_id FROM usage_requestintent")}
    if client is not None:
        ids |= {i.decode() for shard in ALL_SHARDS for i in client.hkeys(shard.intents)}
    return ids


def _key_id(faults_db, name: str) -> int:
    return faults_db.query("SELECT id FROM providers_apikey WHERE name = %s", (name,))[0][0]


@pytest.mark.parametrize("faults_redis", [False], indirect=True)
@pytest.mark.parametrize("store", ["redis", "database"])
def test_sigkill_with_streams_in_flight_leaves_one_lost_row_per_request(
        replicas, faults_db, faults_redis, fake_upstream, key_name, store):
    env = {**INTERVAL, **({} if store == "redis" else {"REDIS_URL": "", "CELERY_BROKER_URL": ""})}
    budgeted = create_api_key(key_name, "--budget-usd", "10", env=replicas.env)
    unbudgeted = create_api_key(f"{key_name}-free", env=replicas.env)
    client = redis.Redis.from_url(faults_redis.url) if store == "redis" else None
    # A slow stream: the upstream has answered and is sending chunks when the replica dies.
    fake_upstream.behave(PROVIDER, chunk_delay_s=30)
    [url] = replicas.start(1, **env)
    doomed = replicas.processes[-1]

    clients = _streams_in_background(url, [budgeted, unbudgeted], STREAMS)
    assert len(fake_upstream.wait_for_calls(STREAMS, PROVIDER, timeout=15)) == STREAMS
    in_flight = _intent_ids(faults_db, client)
    assert len(in_flight) == STREAMS  # every one written before its upstream call

    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    clients.join(timeout=15)
    assert ledger_rows(faults_db, key_name) == []  # the dead replica wrote none

    replicas.start(1, **env)  # its reaper takes the dead one's intents after a lease
    rows = wait_until(
        lambda: (r := ledger_rows(faults_db, key_name) + ledger_rows(faults_db, f"{key_name}-free"))
        and len(r) >= STREAMS and r, timeout=20, what=f"{STREAMS} lost rows")
    assert sorted(request_id for request_id, _, _ in rows) == sorted(in_flight)
    assert {status for _, status, _ in rows} == {"lost"}
    details = faults_db.query(
        "SELECT input_tokens, cost_usd, output_tokens, usage_source, http_status, upstream_model "
        "FROM usage_usagerecord WHERE request_id IN ({})".format(", ".join(["%s"] * STREAMS)),
        tuple(in_flight))
    assert {row[2:] for row in details} == {(0, "estimated", 0, "up-fault")}
    # The prompt estimate, priced at the configured $1000 per million input tokens.
    assert all(tokens > 0 and cost == Decimal(tokens) / 1000 for tokens, cost, *_ in details)
    wait_until(lambda: not _intent_ids(faults_db, client), timeout=5, what="no intent left")

    key_id = _key_id(faults_db, key_name)
    lost_cost = sum(cost for _, _, cost in ledger_rows(faults_db, key_name))
    [(reserved, spent)] = faults_db.query(
        "SELECT reserved_units, spent_units FROM usage_budgetcounter "
        "WHERE scope = 'key' AND scope_id = %s", (key_id,))
    assert reserved == 0
    assert Decimal(spent) / 10 ** 10 == lost_cost
    if client is not None:
        [counter] = client.keys(f"gw:budget:*:key:{key_id}:*")
        assert int(client.hget(counter, "r")) == 0
        assert not {i.decode() for shard in ALL_SHARDS
                    for i in client.hkeys(shard.reservations)} & in_flight

    # A reaper that died halfway, or a second one, finds the same intents again: no second
    # row, nothing released or charged twice.
    redis_counter = (client.hgetall(counter) if client is not None else None)
    replayed = {rid: _replayed_intent(rid, key_id) for rid in in_flight}
    if client is not None:
        for rid, payload in replayed.items():
            shard = intent_shard(rid, Intent.decode(payload).shared_limits)
            client.hset(shard.intents, rid, payload)
            client.zadd(shard.intent_expiry, {rid: 0})
    else:
        for request_id, payload in replayed.items():
            faults_db.query("INSERT INTO usage_requestintent (request_id, payload, expires_at) "
                            "VALUES (%s, %s, '2000-01-01')", (request_id, payload))
    wait_until(lambda: not _intent_ids(faults_db, client), timeout=10,
               what="the replayed intents reaped")
    again = ledger_rows(faults_db, key_name) + ledger_rows(faults_db, f"{key_name}-free")
    assert sorted(r[0] for r in again) == sorted(in_flight)
    assert faults_db.query("SELECT reserved_units, spent_units FROM usage_budgetcounter "
                           "WHERE scope = 'key' AND scope_id = %s", (key_id,)) == [(reserved, spent)]
    if client is not None:
        assert client.hgetall(counter) == redis_counter


def _replayed_intent(request_id: str, key_id: int) -> str:
    """An intent, with a Redis budget reservation, for a request that has its row already
    (what a reaper that died before deleting it leaves)."""
    return json.dumps({
        "request_id": request_id, "client_request_id": "", "created_at": "2026-01-01T00:00:00+00:00",
        "api_key_id": key_id, "key_prefix": "", "team_id": None, "surface": "chat",
        "public_model": "gpt-fault", "upstream_model": "up-fault", "provider_name": PROVIDER,
        "route_id": None, "stream": True, "prompt_tokens": 5, "cost_usd": "0.005",
        "price_id": None, "idempotency_key": "",
        "shared_limits": [["key", key_id, "10", "month"]]})


@pytest.mark.parametrize("faults_redis", [False], indirect=True)
def test_a_live_request_is_never_reaped(replicas, faults_db, fake_upstream, key_name):
    """A stream that lasts several leases, with another replica reaping all along: its intent
    is renewed by its own replica, and its one row is the real one (`ok`)."""
    key = create_api_key(key_name, "--budget-usd", "10", env=replicas.env)
    fake_upstream.behave(PROVIDER, chunk_delay_s=0.4)  # about 4 s: 4 leases
    url, _reaper = replicas.start(2, **INTERVAL)
    response = httpx.post(f"{url}/v1/chat/completions", json=chat_body(stream=True),
                          headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    rows = wait_until(lambda: ledger_rows(faults_db, key_name), timeout=10, what="its row")
    assert [(r[0], r[1]) for r in rows] == [(response.headers["x-request-id"], "ok")]
