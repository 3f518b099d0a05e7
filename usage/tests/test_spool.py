"""A database that refuses ledger writes loses no rows: they are spooled and land later."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from django.db import connection

from usage.models import UsageRecord
from usage.spool import ledger_spool_flush, spool_size

TABLE = UsageRecord._meta.db_table


def _rename(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


async def _send(url: str, key: str, n: int, stream_every: int = 3) -> list[int]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
        async def one(i: int) -> int:
            response = await client.post(
                f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                json={"model": "demo", "stream": i % stream_every == 0,
                      "messages": [{"role": "user", "content": f"request {i}"}]})
            return response.status_code
        return await asyncio.gather(*[one(i) for i in range(n)])


def test_rows_written_while_the_ledger_is_down_land_after_recovery(gateway_url, demo_key):
    _rename(TABLE, TABLE + "_offline")
    try:
        statuses = asyncio.run(_send(gateway_url, demo_key, 500))
    finally:
        _rename(TABLE + "_offline", TABLE)
    assert statuses == [200] * 500  # clients were served throughout
    assert spool_size() > 0
    deadline = time.monotonic() + 60
    while UsageRecord.objects.count() < 500 and time.monotonic() < deadline:
        time.sleep(0.2)
    ledger_spool_flush()  # a second flush (as Celery would run) must add nothing
    rows = UsageRecord.objects.all()
    assert rows.count() == 500
    assert len(set(rows.values_list("request_id", flat=True))) == 500
    assert spool_size() == 0


def test_a_flusher_stranded_on_a_stopped_event_loop_does_not_stop_another_loop_flushing(
        transactional_db):
    """A loop stopped while its flusher slept (a server thread's loop) leaves that task pending
    for ever; rows spooled later from another loop must still get a flusher of their own."""
    from gateway.ledger import LedgerWriter
    from providers.services import api_key_create
    from usage.tests.test_rollups import _entry_with_id

    key, _ = api_key_create(name="spooled")
    writer = LedgerWriter()
    writer.FLUSH_INTERVAL_S = 0.05
    stranded = asyncio.new_event_loop()
    _rename(TABLE, TABLE + "_offline")
    try:
        stranded.run_until_complete(writer.write(_entry_with_id("req-on-the-stopped-loop", key)))
        assert spool_size() == 1 and not writer._flusher.done()  # it sleeps on `stranded`
    finally:
        _rename(TABLE + "_offline", TABLE)

    async def later() -> None:
        try:
            await writer.write(_entry_with_id("req-on-the-running-loop", key))
        finally:
            await asyncio.to_thread(_rename, TABLE + "_offline", TABLE)
        deadline = time.monotonic() + 30
        while spool_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    _rename(TABLE, TABLE + "_offline")
    asyncio.run(later())
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == [
        "req-on-the-running-loop", "req-on-the-stopped-loop"]
    assert spool_size() == 0
    stranded.close()


def test_a_row_the_database_refuses_for_good_is_set_aside_and_the_rows_after_it_land(
        transactional_db, settings, caplog):
    from dataclasses import replace

    from providers.services import api_key_create
    from usage.spool import spool_encode, spool_push
    from usage.tests.test_rollups import _entry_with_id

    key, _ = api_key_create(name="spooled")
    poison = replace(_entry_with_id("req-poison", key), status=None)  # NOT NULL: never writable
    spool_push(*(spool_encode(entry=e, settle_budget=False, response=None, release_claim=None)
                 for e in (poison, _entry_with_id("req-after-it", key))))
    assert ledger_spool_flush() == 2
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["req-after-it"]
    assert spool_size() == 0
    rejected = (Path(settings.GATEWAY_SPOOL_DIR) / "rejected-ledger.jsonl").read_text()
    assert '"req-poison"' in rejected and "req-after-it" not in rejected
    assert "req-poison" in caplog.text
