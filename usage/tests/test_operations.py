"""The operations rollup and page: percentiles from fixed buckets (exact), the hourly rollup
of a known ledger (exact counts, idempotent, filled by usage_rollup), the page's figures from
rollup and ledger alike, and each process's circuit view through a real Redis."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone

import pytest

from usage.models import HourlyOperations
from usage.operations import operations_groups, operations_report
from usage.rollups import (
    LATENCY_EDGES_MS, bucket_index, percentile_from_buckets, usage_rollup,
)
from usage.services import LedgerEntry, usage_record_write
from usage.tests.test_reports import make_user, signed_in

DAY = date(2026, 3, 14)
_n = iter(range(1, 100000))


def _write(*, at: datetime, latency_ms: int, ttft_ms: int | None = None, status: str = "ok",
           provider: str = "prov-a", model: str = "model-x", key=None) -> None:
    n = next(_n)
    usage_record_write(entry=LedgerEntry(
        request_id=f"ops-{n}", client_request_id="", created_at=at,
        api_key_id=key.id if key else None, key_prefix=key.prefix if key else "",
        team_id=None, surface="openai.chat", public_model=model, upstream_model=model,
        provider_name=provider, route_id=None, stream=ttft_ms is not None, status=status,
        http_status=200 if status == "ok" else 502, error_type="", input_tokens=1,
        output_tokens=1, cached_tokens=0, reasoning_tokens=0, usage_source="reported",
        cost_usd=0, price_id=None, latency_ms=latency_ms, ttft_ms=ttft_ms))


def _buckets(**counts: int) -> list[int]:
    """Bucket counts by the bucket's upper edge in ms (`b100=3`: 3 values in [50, 100))."""
    out = [0] * (len(LATENCY_EDGES_MS) + 1)
    for name, count in counts.items():
        out[LATENCY_EDGES_MS.index(int(name[1:]))] = count
    return out


def test_bucket_edges_are_exclusive_upper_bounds():
    assert bucket_index(0) == 0 and bucket_index(9) == 0
    assert bucket_index(10) == 1 and bucket_index(24) == 1 and bucket_index(25) == 2
    assert bucket_index(299_999) == len(LATENCY_EDGES_MS) - 1
    assert bucket_index(300_000) == len(LATENCY_EDGES_MS) == bucket_index(10**9)


def test_percentiles_are_interpolated_within_the_bucket_that_holds_the_rank():
    # 10 values: 4 in [50, 100), 6 in [100, 150).
    buckets = _buckets(b100=4, b150=6)
    # p50: rank 5, the 1st of 6 in [100, 150): 100 + 1/6 * 50.
    assert percentile_from_buckets(buckets, 0.5) == pytest.approx(100 + 50 / 6, abs=1e-9)
    # p95: rank 9.5: 100 + 5.5/6 * 50.
    assert percentile_from_buckets(buckets, 0.95) == pytest.approx(100 + 5.5 / 6 * 50, abs=1e-9)
    # p40: rank 4 ends the first bucket exactly: its upper edge.
    assert percentile_from_buckets(buckets, 0.4) == 100.0
    # One value in bucket 0 [0, 10): p50 is rank 0.5 -> 5 ms.
    assert percentile_from_buckets(_buckets(b10=1), 0.5) == 5.0
    # The open last bucket gives its lower edge.
    last = [0] * len(LATENCY_EDGES_MS) + [3]
    assert percentile_from_buckets(last, 0.95) == float(LATENCY_EDGES_MS[-1])
    assert percentile_from_buckets([0] * (len(LATENCY_EDGES_MS) + 1), 0.5) is None


@pytest.mark.django_db
def test_hourly_rollup_of_a_known_ledger_is_exact_and_idempotent():
    ten, eleven = (datetime(2026, 3, 14, h, 5, tzinfo=timezone.utc) for h in (10, 11))
    for latency, ttft in ((60, 20), (80, 30), (120, None), (140, None)):
        _write(at=ten, latency_ms=latency, ttft_ms=ttft)
    _write(at=ten, latency_ms=2500, status="upstream_error")
    _write(at=ten, latency_ms=40, provider="prov-b")
    _write(at=eleven, latency_ms=500)
    _write(at=datetime(2026, 3, 15, 0, 0, tzinfo=timezone.utc), latency_ms=1)  # the next day
    assert usage_rollup(day=DAY) == 2  # daily groups (prov-a, prov-b): its own count
    rows = {(r.hour.hour, r.provider_name): r for r in HourlyOperations.objects.all()}
    assert set(rows) == {(10, "prov-a"), (10, "prov-b"), (11, "prov-a")}
    a10 = rows[(10, "prov-a")]
    assert (a10.requests, a10.errors, a10.latency_sum_ms, a10.ttft_count, a10.ttft_sum_ms) == (
        5, 1, 60 + 80 + 120 + 140 + 2500, 2, 50)
    assert a10.latency_buckets == _buckets(b100=2, b150=2, b3000=1)
    assert a10.ttft_buckets == _buckets(b25=1, b50=1)
    usage_rollup(day=DAY)
    assert HourlyOperations.objects.count() == 3
    assert HourlyOperations.objects.get(hour__hour=10, provider_name="prov-a").latency_buckets == \
        a10.latency_buckets


@pytest.mark.django_db
def test_the_page_reads_rollup_hours_and_the_ledger_for_recent_ones_alike():
    now = datetime(2026, 3, 14, 12, 30, tzinfo=timezone.utc)
    for hour in (9, 12):  # 9: rolled up; 12: the current hour, read from the ledger
        for latency in (60, 80, 120, 140):
            _write(at=now.replace(hour=hour, minute=1), latency_ms=latency, ttft_ms=latency // 2)
    _write(at=now.replace(hour=9, minute=2), latency_ms=60, status="upstream_error")
    usage_rollup(day=DAY)
    HourlyOperations.objects.filter(hour__hour=12).delete()  # as if the rollup lagged
    start, end = now.replace(hour=0, minute=0), now.replace(hour=13, minute=0)
    groups = operations_groups(start=start, end=end, now=now)
    group = groups[("prov-a", "model-x")]
    assert {h.hour: t.requests for h, t in group.hours.items()} == {9: 5, 12: 4}
    assert group.total.requests == 9 and group.total.errors == 1
    report = operations_report(start=start, end=end, now=now)
    (row,) = report["rows"]
    # 9 latencies: 5 in [50, 100) (60, 80 each hour and the error's 60), 4 in [100, 150).
    # p50: rank 4.5 in the first: 50 + 4.5/5 * 50 = 95; p95: rank 8.55: 100 + 3.55/4 * 50.
    assert row["requests"] == 9 and row["error_rate"] == "11.1%"
    assert row["latency_p50"] == "95 ms"
    assert row["latency_p95"] == f"{100 + 3.55 / 4 * 50:.0f} ms" == "144 ms"
    # 8 times to first token (the error has none): 30, 40 in [25, 50), 60, 70 in [50, 100),
    # each hour; rank 4 ends the first bucket: its upper edge.
    assert row["ttft_p50"] == "50 ms"
    assert [c["id"] for c in report["charts"]] == [
        "latency-p50", "latency-p95", "ttft-p50", "ttft-p95", "error-rate"]


@pytest.mark.django_db
def test_operations_page_is_for_finance_and_refuses_a_bad_range(settings):
    from django.test import Client

    settings.REDIS_URL = ""  # one process to show, whatever the suite runs against

    assert Client().get("/reports/operations/").status_code == 302
    assert signed_in(make_user("ops", finance=False)).get("/reports/operations/").status_code == 403
    client = signed_in(make_user("fin", finance=True))
    page = client.get("/reports/operations/")
    assert page.status_code == 200 and b"Circuit breakers" in page.content
    assert b"Redis is not configured: one process, this one." in page.content
    assert client.get("/reports/operations/", {"hours": "5"}).status_code == 400


@pytest.mark.django_db(transaction=True)
def test_each_process_announces_its_own_circuit_view_through_redis(mock_provider, tmp_path):
    """Two processes' routing states against one real Redis (a server of the test's own):
    each one's announced view is listed, with the breaker one of them opened."""
    import redis.asyncio as aioredis

    from gateway.routing_state import RedisRoutingState
    from gateway.tests.redis_server import RedisServer
    from providers.cache import snapshot_cache
    from gateway.process_views import ANNOUNCE_KEY, ANNOUNCE_TTL_MS, process_view_announce, process_views

    server = RedisServer()
    server.start()
    try:
        async def scenario():
            snapshot_cache.invalidate()
            redis = aioredis.Redis.from_url(server.url)
            first, second = RedisRoutingState(redis), RedisRoutingState(redis)
            snapshot = await snapshot_cache.get()
            (deployment,) = snapshot.deployments["mock-test"]
            for _ in range(10):
                await first.record_failure(deployment.candidate, "upstream_5xx", now=1e12)
            await process_view_announce(redis, first, process="proc-a")
            await process_view_announce(redis, second, process="proc-b")
            views = await process_views(redis)
            # A process that stopped announcing drops out once its view is older than the TTL.
            later = await process_views(redis, now=views[1]["at"] + ANNOUNCE_TTL_MS / 1000 + 0.001)
            left = await redis.hkeys(ANNOUNCE_KEY)
            await redis.aclose()
            return deployment, views, later, left

        deployment, views, later, left = asyncio.run(scenario())
    finally:
        server.stop()
    assert [v["process"] for v in views] == ["proc-a", "proc-b"]
    for view in views:
        (route,) = view["routes"]
        # The breaker is shared: both processes see it open through Redis.
        assert (route["route_id"], route["provider"], route["model"], route["state"]) == (
            deployment.route_id, "mock-m", "mock-test", "open")
        assert view["shared"] is True and view["degraded"] is False
    assert later == [] and left == []
