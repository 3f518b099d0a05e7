"""Failing upstreams, Redis and database: each ends cleanly for the client, with a ledger row."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter

import aiohttp
import httpx
import pytest
from django.db import connection

from providers.config_file import config_parse
from providers.services import config_apply
from usage.models import UsageRecord


def _chat(url: str, key: str, *, stream: bool = False, model: str = "gpt-test") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


def _rows(n: int, timeout: float = 10) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while UsageRecord.objects.count() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(UsageRecord.objects.order_by("created_at"))


def _events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


def test_a_hanging_upstream_times_out_with_504_and_a_row(gateway_url, fake_upstream, api_key):
    config_apply(spec=config_parse(f"""
providers:
  - name: slow
    kind: openai
    base_url: {fake_upstream.base_url("slow")}
    timeout_s: 1
    models: {{gpt-test: up}}
"""))
    fake_upstream.behave("slow", latency_s=4)
    started = time.monotonic()
    response = _chat(gateway_url, api_key)
    assert response.status_code == 504 and time.monotonic() - started < 3.5
    assert response.json()["error"]["code"] == "upstream_timeout"
    [row] = _rows(1)
    assert (row.status, row.http_status, row.cost_usd) == ("timeout", 504, 0)


def test_a_stream_that_stalls_mid_way_ends_with_an_error_event(gateway_url, fake_upstream, api_key):
    config_apply(spec=config_parse(f"""
providers:
  - name: stall
    kind: openai
    base_url: {fake_upstream.base_url("stall")}
    timeout_s: 1
    models: {{gpt-test: up}}
prices:
  - {{model: up, input: "1", output: "1"}}
"""))
    fake_upstream.behave("stall", reply="one two three", chunk_delay_s=2.5)
    events = _events(_chat(gateway_url, api_key, stream=True))
    assert json.loads(events[-2])["error"]["code"] == "upstream_timeout" and events[-1] == "[DONE]"
    [row] = _rows(1)
    assert row.status == "timeout" and row.output_tokens >= 1 and row.usage_source == "estimated"


def test_garbage_sse_ends_cleanly(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", garbage_after=2)
    events = _events(_chat(gateway_url, api_key, stream=True))
    assert json.loads(events[-2])["error"]["type"] == "api_error" and events[-1] == "[DONE]"
    [row] = _rows(1)
    assert (row.status, row.error_type) == ("upstream_error", "bad_stream")


def test_200_with_an_error_body_is_a_502_with_a_row(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", error_in_200=True)
    response = _chat(gateway_url, api_key)
    assert response.status_code == 502 and "error" in response.json()
    [row] = _rows(1)
    assert (row.status, row.error_type, row.cost_usd) == ("upstream_error", "error_body", 0)


def test_redis_unreachable_keeps_serving_with_per_process_state(spawn_gateway, demo_key, make_key):
    url = spawn_gateway(REDIS_URL="redis://127.0.0.1:9/0")
    limited = make_key(name="limited", rpm=3)
    served = [_chat(url, demo_key, model="demo") for _ in range(5)]
    assert [r.status_code for r in served] == [200] * 5
    limits = [_chat(url, limited, model="demo") for _ in range(4)]
    assert [r.status_code for r in limits] == [200, 200, 200, 429]
    detail = httpx.get(f"{url}/health/detailed")
    assert detail.status_code == 503 and detail.json()["redis"]["ok"] is False
    # One row per request, the refused one included: each request id exactly once.
    ids = Counter(r.headers["x-request-id"] for r in served + limits)
    assert len(ids) == 9
    assert Counter(row.request_id for row in _rows(9)) == ids


def _rename(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


def test_database_down_keeps_serving_cached_keys_and_loses_no_row(gateway_url, demo_key):
    assert _chat(gateway_url, demo_key, model="demo").status_code == 200  # keys and routes cached
    tables = ["usage_usagerecord", "providers_configversion", "providers_apikey"]
    for table in tables:
        _rename(table, table + "_down")
    try:
        codes = [_chat(gateway_url, demo_key, model="demo").status_code for _ in range(20)]
    finally:
        for table in tables:
            _rename(table + "_down", table)
    assert codes == [200] * 20
    rows = _rows(21, timeout=30)
    assert len(rows) == 21 and len({r.request_id for r in rows}) == 21


async def _soak(url: str, key: str, total: int) -> dict[int, int]:
    bodies = [
        (b'{"model": "demo", "messages": [{"role": "user", "content": "soak"}]}', True),
        (b'{"model": "demo", "stream": true, "messages": [{"role": "user", "content": "soak"}]}', True),
        (b'{"model": "demo", "messages": [', False),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', False),
        (b'[1, 2]', False),
    ]
    counts: dict[int, int] = {}
    queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(bodies[i % len(bodies)][0])

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{url}/v1/chat/completions", data=body,
                                    headers={"authorization": f"Bearer {key}"}) as response:
                await response.read()
                counts[response.status] = counts.get(response.status, 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[worker(session) for _ in range(32)])
    return counts


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc")
def test_soak_of_20000_mixed_requests_keeps_memory_flat(spawn_gateway, demo_key, capsys):
    url = spawn_gateway()
    pid = spawn_gateway.processes[-1].pid
    asyncio.run(_soak(url, demo_key, 1000))  # warm up pools and caches
    start_kb = _rss_kb(pid)
    counts = asyncio.run(_soak(url, demo_key, 20_000))
    end_kb = _rss_kb(pid)
    with capsys.disabled():
        print(f"\nsoak: 20000 requests {counts}; gateway RSS {start_kb / 1024:.1f} MB -> {end_kb / 1024:.1f} MB")
    assert counts == {200: 8000, 400: 8000, 404: 4000}
    assert end_kb - start_kb < 40 * 1024
    assert UsageRecord.objects.filter(status="ok").count() == 8400
