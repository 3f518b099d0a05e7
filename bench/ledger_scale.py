"""The `ledger` scenario of `make bench` (issue 18): a big ledger on MariaDB, partitioned by
month (usage.partitions), against an empty one.

    BENCH_CASES=ledger make bench        # or alone: .venv/bin/python -m bench.ledger_scale

On a PRIVATE mariadbd (its own datadir in a temporary directory, a free loopback port; never
the shared 3306), in a child process with production settings (DEBUG off):

1. `manage.py migrate` (the ledger partitioned by month, the request-id claims table), 40 keys
   in 8 teams, 8 models on 3 providers, one price each.
2. The ledger writer on the EMPTY table: BENCH_LEDGER_WRITES rows through
   gateway.ledger.LedgerWriter (group commit, as the proxy writes them) from
   BENCH_LEDGER_CONCURRENCY concurrent tasks; rows/s and per-write latency, BENCH_LEDGER_ROUNDS
   rounds.
3. Bulk load: BENCH_LEDGER_ROWS rows (default 50,000,000) spread evenly over BENCH_LEDGER_MONTHS
   months up to now, generated inside the server (multi-row INSERT ... SELECT from MariaDB's
   SEQUENCE engine, chunks of 1,000,000 rows, request ids random like the gateway's), their
   request-id claims (loaded without the primary key, then the key built sorted), the daily
   rollups (one INSERT ... SELECT ... GROUP BY per month), the monthly ones from them
   (usage.rollups.monthly_rollup), yesterday's by usage.rollups.usage_rollup as the beat task
   runs it (which seals it, usage.models.LedgerDay, unless the run is within ten minutes of
   midnight UTC), today's once during each of its hours so far, as the beat runs it, and the
   current partitions ahead.
4. Once InnoDB has written back the load's dirty pages (BENCH_LEDGER_SETTLE_S, 900 at most),
   today's rollup once more (as the beat runs it every 5 minutes: it seals the hours that
   ended a quarter of an hour before, usage.models.LedgerHour), then /reports/ through
   Django's test client signed in as a superuser, BENCH_LEDGER_PAGE_REPEAT renders each of:
   the last 30 days, the whole range, one key over the whole range (target: p95 <= 0.5 s).
   Sealed days come from the daily rollups, today's sealed hours from the hourly one and only
   its other hours from the ledger, so the page costs O(rows of the last hour or two), not
   O(table) nor O(rows of today); whole months from the monthly rollup, and a range over 92
   days is shown by month (usage.views), so not O(days of the range) either.
5. The ledger writer again, on the BIG table: same rows, same concurrency.
6. BENCH_LEDGER_PAIRS (3) pairs of single writer rounds, each in a process of its own, one on
   a second, empty database of the same server (emptied again after each round) and one on
   the big one, in the order empty, big, big, empty, ...: both tables measured on the same
   warmed server, and a drift of the machine's load weighs on both (target: the big table's
   median rows/s at least 90 % of the empty one's; without pairs, steps 2 and 5 are compared).

Results: a Markdown table on stdout and bench/results/ledger-<UTC timestamp>.json
(+ ledger-latest.json). Knobs: BENCH_LEDGER_ROWS, BENCH_LEDGER_MONTHS (24),
BENCH_LEDGER_WRITES (20000), BENCH_LEDGER_CONCURRENCY (64), BENCH_LEDGER_ROUNDS (3),
BENCH_LEDGER_PAIRS (3),
BENCH_LEDGER_PAGE_REPEAT (20), BENCH_LEDGER_SETTLE_S (900), BENCH_LEDGER_BUFFER_POOL (2G:
innodb_buffer_pool_size), BENCH_LEDGER_PROFILE (set: one more render of each case under
cProfile, printed with its SQL statements by time), BENCH_RESULTS_DIR.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "gw_ledger_bench"
LOAD_CHUNK = 1_000_000
KEYS, TEAMS, MODELS, PROVIDERS = 40, 8, 8, ("openai-main", "anthropic-main", "vllm-local")
PAGE_BUDGET_S = 0.5
SAME_THROUGHPUT = 0.9  # "the same": big-table rows/s at least 90 % of the empty table's


def _knob(name: str, default: int) -> int:
    return int(float(os.environ.get(name) or default))


def _server(buffer_pool: str):
    """A private mariadbd (tests/faults/harness.py's, with a bigger buffer pool and redo log
    for the bulk load)."""
    from tests.faults.harness import MariaDB

    server = MariaDB(server_options={"innodb-buffer-pool-size": buffer_pool,
                                     "innodb-log-file-size": "1G", "max-allowed-packet": "256M"})
    server.install()
    server.start()
    server.query(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                 database=None)
    return server


def _child_env(url: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(40),
           "GATEWAY_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "DATABASE_URL": url,
           "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost", "LOG_LEVEL": "WARNING",
           "REDIS_URL": "", "CELERY_BROKER_URL": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# What follows runs in the child process, Django set up against the private server.

def _setup_config() -> dict:
    from decimal import Decimal

    from providers.models import Price
    from providers.services import api_key_create

    keys = [api_key_create(name=f"app-{n}", team=f"team-{n % TEAMS}")[0] for n in range(KEYS)]
    prices = [Price.objects.create(upstream_model=f"up-model-{m}", input_per_mtok=Decimal("0.15"),
                                   output_per_mtok=Decimal("0.60")) for m in range(MODELS)]
    return {"keys": keys, "prices": prices}


def _config_loaded() -> dict:
    """`_setup_config`'s keys and prices, read back (a writer child of `run`), or made now in a
    database that has none."""
    from providers.models import ApiKey, Price

    keys = list(ApiKey.objects.filter(name__startswith="app-").select_related("team")
                .order_by("pk"))
    if not keys:
        return _setup_config()
    prices = list(Price.objects.filter(upstream_model__startswith="up-model-")
                  .order_by("upstream_model"))
    return {"keys": keys, "prices": prices}


def _entries(config: dict, count: int, tag: str):
    from decimal import Decimal

    from django.utils import timezone

    from usage.services import LedgerEntry

    keys, prices = config["keys"], config["prices"]
    now = timezone.now()
    for i in range(count):
        key, m = keys[i % KEYS], (i // KEYS) % MODELS
        yield LedgerEntry(
            request_id=f"req_{secrets.token_hex(16)}", client_request_id="", created_at=now,
            api_key_id=key.id, key_prefix=key.prefix, key_name=key.name, team_id=key.team_id,
            team_name=key.team.name, surface="openai.chat", public_model=f"model-{m}",
            upstream_model=f"up-model-{m}", provider_name=PROVIDERS[m % 3], route_id=None,
            stream=True, status="ok", http_status=200, error_type="", input_tokens=420,
            output_tokens=180, cached_tokens=0, reasoning_tokens=0, usage_source="reported",
            cost_usd=Decimal("0.0001710000"), price_id=prices[m].id, latency_ms=900,
            ttft_ms=120, tags=tag)


def _writer_round(config: dict, writes: int, concurrency: int, tag: str) -> dict:
    """`writes` rows through one LedgerWriter from `concurrency` tasks; rows/s and latency."""
    from gateway.ledger import LedgerWriter

    entries = list(_entries(config, writes, tag))
    writer = LedgerWriter()
    latencies: list[float] = []

    async def worker(mine: list) -> None:
        for entry in mine:
            started = time.perf_counter()
            await writer.write(entry)
            latencies.append(time.perf_counter() - started)

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(worker(entries[i::concurrency]) for i in range(concurrency)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return {"rows": writes, "elapsed_s": round(elapsed, 3), "rows_per_s": round(writes / elapsed),
            "write_p50_ms": round(_p(latencies, 0.5) * 1000, 1),
            "write_p99_ms": round(_p(latencies, 0.99) * 1000, 1)}


def _writer(config: dict, *, writes: int, concurrency: int, rounds: int, tag: str) -> dict:
    from django.utils import timezone

    from usage.models import UsageRecord

    before = UsageRecord.objects.count() if tag == "empty" else None
    started = timezone.now() - dt.timedelta(seconds=1)
    runs = [_writer_round(config, writes, concurrency, f"{tag}-{r}") for r in range(rounds)]
    # Only the rows written since `started` (an index range): on the big table, counting by tag
    # alone scanned every row (minutes at 50M rows).
    written = UsageRecord.objects.filter(created_at__gte=started,
                                         tags__startswith=f"{tag}-").count()
    assert written == writes * rounds, (written, writes * rounds)
    return {"table_rows_before": before, "concurrency": concurrency, "rounds": runs,
            "rows_per_s_median": statistics.median(r["rows_per_s"] for r in runs),
            "write_p99_ms_median": statistics.median(r["write_p99_ms"] for r in runs)}


def _elt(values) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def _bulk_load(config: dict, *, rows: int, months: int) -> dict:
    """`rows` ledger rows over `months` months up to now, generated by the server."""
    from django.db import connection
    from django.utils import timezone

    from usage.partitions import (
        CLAIM_WINDOW, add_months, ledger_claims_purge, ledger_partitions_ensure,
        ledger_partitions_extend_back, month_start,
    )
    from usage.rollups import ledger_days_unsealed, monthly_rollup, usage_rollup

    keys, prices = config["keys"], config["prices"]
    now = timezone.now().replace(tzinfo=None, microsecond=0) - dt.timedelta(minutes=5)
    start = dt.datetime.combine(add_months(month_start(now), -(months - 1)), dt.time.min)
    span_us = int((now - start).total_seconds() * 1e6)
    k = f"1 + s.seq % {KEYS}"
    m = f"1 + (s.seq DIV {KEYS}) % {MODELS}"
    created = (f"TIMESTAMP('{start:%Y-%m-%d %H:%M:%S}') + INTERVAL "
               f"(s.seq - 1) * {span_us // rows} MICROSECOND")
    columns = {
        "request_id": "CONCAT('req_', MD5(CONCAT('bench', s.seq)))", "client_request_id": "''",
        "created_at": created,
        "api_key_id": f"ELT({k}, {_elt(key.id for key in keys)})",
        "key_prefix": f"ELT({k}, {_elt(key.prefix for key in keys)})",
        "key_name": f"ELT({k}, {_elt(key.name for key in keys)})",
        "team_id": f"ELT({k}, {_elt(key.team_id for key in keys)})",
        "team_name": f"ELT({k}, {_elt(key.team.name for key in keys)})",
        "surface": "'openai.chat'",
        "public_model": f"ELT({m}, {_elt(f'model-{i}' for i in range(MODELS))})",
        "upstream_model": f"ELT({m}, {_elt(f'up-model-{i}' for i in range(MODELS))})",
        "provider_name": f"ELT({m}, {_elt(PROVIDERS[i % 3] for i in range(MODELS))})",
        "route_id": "NULL", "stream": "s.seq % 2",
        "status": "IF(s.seq % 50 = 0, 'upstream_error', 'ok')",
        "http_status": "IF(s.seq % 50 = 0, 502, 200)", "error_type": "''",
        "input_tokens": "50 + (s.seq * 7919) % 3950",
        "output_tokens": "1 + (s.seq * 104729) % 1500",
        "cached_tokens": "(s.seq * 31) % 50", "cache_write_5m_tokens": "0",
        "cache_write_1h_tokens": "0", "reasoning_tokens": "0", "audio_input_tokens": "0",
        "audio_output_tokens": "0", "image_input_tokens": "0", "image_output_tokens": "0",
        "usage_source": "'reported'",
        "cost_usd": "CAST(((s.seq * 104729) % 100000000) / 10000000000 AS DECIMAL(20,10))",
        "price_id": f"ELT({m}, {_elt(p.id for p in prices)})",
        "latency_ms": "100 + (s.seq * 13) % 4900", "ttft_ms": "50 + (s.seq * 17) % 900",
        "idempotency_key": "''", "tags": "''", "end_user": "''",
    }
    # The table was partitioned empty (from the current month): the older months get theirs.
    ledger_partitions_extend_back(since=start.date())
    names = ", ".join(f"`{c}`" for c in columns)
    select = ", ".join(columns.values())
    timings = {}
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION unique_checks = 0")
        started = time.perf_counter()
        for first in range(1, rows + 1, LOAD_CHUNK):
            last = min(rows, first + LOAD_CHUNK - 1)
            cursor.execute(f"INSERT INTO usage_usagerecord ({names}) SELECT {select} "
                           f"FROM seq_{first}_to_{last} s")
            if (last // LOAD_CHUNK) % 5 == 0 or last == rows:
                print(f"  loaded {last:,} rows ({time.perf_counter() - started:.0f} s)",
                      flush=True)
        timings["ledger_load_s"] = round(time.perf_counter() - started, 1)

        # Claims: those of the last CLAIM_WINDOW only, what the daily purge leaves; loaded
        # without their primary key, which is then built sorted.
        started = time.perf_counter()
        step_us = span_us // rows
        window = max(1, rows - int(CLAIM_WINDOW.total_seconds() * 1e6) // step_us)
        cursor.execute("CREATE TABLE usage_ledgerrequest_load LIKE usage_ledgerrequest")
        cursor.execute("ALTER TABLE usage_ledgerrequest_load DROP PRIMARY KEY")
        for first in range(window, rows + 1, LOAD_CHUNK):
            last = min(rows, first + LOAD_CHUNK - 1)
            cursor.execute("INSERT INTO usage_ledgerrequest_load (request_id, created_at) "
                           f"SELECT {columns['request_id']}, {created} "
                           f"FROM seq_{first}_to_{last} s")
        cursor.execute("ALTER TABLE usage_ledgerrequest_load ADD PRIMARY KEY (request_id)")
        cursor.execute("INSERT INTO usage_ledgerrequest_load SELECT * FROM usage_ledgerrequest")
        cursor.execute("RENAME TABLE usage_ledgerrequest TO usage_ledgerrequest_old, "
                       "usage_ledgerrequest_load TO usage_ledgerrequest")
        cursor.execute("DROP TABLE usage_ledgerrequest_old")
        timings["claims_load_s"] = round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        sums = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens", "reasoning_tokens", "audio_input_tokens",
                "audio_output_tokens", "image_input_tokens", "image_output_tokens")
        groups = ("api_key_id", "key_prefix", "key_name", "team_id", "team_name",
                  "provider_name", "public_model")
        month = month_start(start)
        today = now.date()
        while month <= today:
            upper = min(add_months(month, 1), today - dt.timedelta(days=1))
            if month < upper:
                cursor.execute(
                    f"INSERT INTO usage_dailyusage (day, {', '.join(groups)}, requests, errors, "
                    f"{', '.join(sums)}, cost_usd) SELECT DATE(created_at), {', '.join(groups)}, "
                    f"COUNT(*), SUM(status <> 'ok'), {', '.join(f'SUM({c})' for c in sums)}, "
                    f"SUM(cost_usd) FROM usage_usagerecord WHERE created_at >= %s AND "
                    f"created_at < %s AND tags = '' GROUP BY DATE(created_at), {', '.join(groups)}",
                    [dt.datetime.combine(month, dt.time.min),
                     dt.datetime.combine(upper, dt.time.min)])
            monthly_rollup(month=month)
            month = add_months(month, 1)
        timings["rollup_s"] = round(time.perf_counter() - started, 1)
        # Yesterday as the beat task rolls it up: once while it was the current day (which
        # creates its LedgerDay row), then now, which seals it.
        yesterday = today - dt.timedelta(days=1)
        usage_rollup(day=yesterday, now=dt.datetime.combine(yesterday, dt.time(12),
                                                             tzinfo=dt.timezone.utc))
        started = time.perf_counter()
        usage_rollup(day=yesterday)
        timings["yesterday_rollup_s"] = round(time.perf_counter() - started, 1)
        timings["yesterday_sealed"] = not ledger_days_unsealed(first=None, last=yesterday)
        # Today as the beat rolls it up every few minutes: once during each of its hours so
        # far (which creates the hour's LedgerHour row); `_child` rolls it up once more just
        # before the page, which seals the hours that ended a quarter of an hour before.
        midnight = dt.datetime.combine(today, dt.time.min, tzinfo=dt.timezone.utc)
        started = time.perf_counter()
        for hour in range(now.hour + 1):
            usage_rollup(day=today, now=midnight + dt.timedelta(hours=hour, minutes=1))
        timings["today_hourly_rollups_s"] = round(time.perf_counter() - started, 1)
        cursor.execute("ANALYZE TABLE usage_usagerecord, usage_ledgerrequest, usage_dailyusage, "
                       "usage_monthlyusage")
        cursor.fetchall()
    ledger_partitions_ensure()
    started = time.perf_counter()
    purged = ledger_claims_purge()  # what the daily beat task does
    timings["claims_purge_s"] = round(time.perf_counter() - started, 1)
    return {"rows": rows, "claims_purged": purged, "months": months,
            "from": start.isoformat(), "to": now.isoformat(),
            "rows_per_day": round(rows / max(1, (now - start).days)), **timings}


def _reports(config: dict, *, repeat: int, first_day: dt.date) -> dict:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    User.objects.create_superuser("bench", "bench@localhost", secrets.token_urlsafe(12))
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    today = timezone.now().date()
    cases = {"last 30 days": {"from": (today - dt.timedelta(days=29)).isoformat(),
                              "to": today.isoformat()},
             "whole range": {"from": first_day.isoformat(), "to": today.isoformat()},
             "one key, whole range": {"from": first_day.isoformat(), "to": today.isoformat(),
                                      "key": str(config["keys"][3].id)}}
    out = {}
    for name, query in cases.items():
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            response = client.get("/reports/", query, secure=True)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, (name, response.status_code)
        times = times[1:]  # the first render warms caches and templates
        out[name] = {"p50_ms": round(_p(times, 0.5) * 1000),
                     "p95_ms": round(_p(times, 0.95) * 1000),
                     "max_ms": round(max(times) * 1000), "renders": repeat}
        if os.environ.get("BENCH_LEDGER_PROFILE"):
            _profile(name, lambda query=query: client.get("/reports/", query, secure=True))
    return out


def _profile(name: str, render) -> None:
    """One more render of a case under cProfile, with every SQL statement timed: prints the
    statements by time and the functions by cumulative time (BENCH_LEDGER_PROFILE=1)."""
    import cProfile
    import pstats

    from django.db import connection

    statements: list[tuple[float, str]] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append((time.perf_counter() - started, sql))

    profiler = cProfile.Profile()
    started = time.perf_counter()
    with connection.execute_wrapper(timed):
        profiler.runcall(render)
    elapsed = time.perf_counter() - started
    sql_s = sum(s for s, _ in statements)
    print(f"profile of {name!r}: {elapsed * 1000:.0f} ms under cProfile, {len(statements)} "
          f"statements, {sql_s * 1000:.0f} ms in the database calls", flush=True)
    for seconds, sql in sorted(statements, reverse=True)[:12]:
        print(f"  {seconds * 1000:8.1f} ms  {sql[:220]}", flush=True)
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
    print(stream.getvalue(), flush=True)


def _settle(max_s: int) -> float:
    from django.db import connection

    from bench.harness import innodb_settle

    with connection.cursor() as cursor:
        return innodb_settle(cursor, max_s)


def _rows_today() -> int:
    from django.utils import timezone

    from usage.models import UsageRecord
    from usage.rollups import day_bounds

    return UsageRecord.objects.between(*day_bounds(timezone.now().date())).count()


def _today_rollup() -> int:
    """Today's rollup as the beat runs it (usage.rollups.usage_rollup); returns how many of
    today's hours are then sealed, so that the page reads them from the hourly rollup."""
    from django.utils import timezone

    from usage.rollups import day_bounds, ledger_hours_sealed, usage_rollup

    today = timezone.now().date()
    usage_rollup(day=today)
    return len(ledger_hours_sealed(start=day_bounds(today)[0], end=day_bounds(today)[1]))


def _writer_child(tag: str) -> int:
    """One writer round (`--writer empty|big`) in its own process, against the database of
    DATABASE_URL: `run` alternates them between an empty database and the big one once the
    main child is done. After an `empty` round its rows and claims are deleted, so the table
    is empty for the next one."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    result = _writer(_config_loaded(), writes=_knob("BENCH_LEDGER_WRITES", 20000),
                     concurrency=_knob("BENCH_LEDGER_CONCURRENCY", 64), rounds=1, tag=tag)
    if tag == "empty":
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM usage_ledgerrequest")
            cursor.execute("DELETE FROM usage_usagerecord")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _child() -> int:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from usage.partitions import ledger_partitions

    rows, months = _knob("BENCH_LEDGER_ROWS", 50_000_000), _knob("BENCH_LEDGER_MONTHS", 24)
    writes, concurrency = _knob("BENCH_LEDGER_WRITES", 20000), _knob("BENCH_LEDGER_CONCURRENCY", 64)
    rounds, repeat = _knob("BENCH_LEDGER_ROUNDS", 3), _knob("BENCH_LEDGER_PAGE_REPEAT", 20)
    call_command("migrate", verbosity=0)
    config = _setup_config()
    print("writer on the empty ledger…", flush=True)
    empty = _writer(config, writes=writes, concurrency=concurrency, rounds=rounds, tag="empty")
    print(f"  {empty['rows_per_s_median']:,} rows/s", flush=True)
    with connection.cursor() as cursor:  # today holds only the loaded traffic's rows
        cursor.execute("DELETE FROM usage_ledgerrequest WHERE request_id IN (SELECT request_id "
                       "FROM usage_usagerecord WHERE tags LIKE 'empty-%%')")
        cursor.execute("DELETE FROM usage_usagerecord WHERE tags LIKE 'empty-%%'")
    print(f"bulk load of {rows:,} rows over {months} months…", flush=True)
    load = _bulk_load(config, rows=rows, months=months)
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM usage_usagerecord")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT SUM(data_length + index_length) FROM information_schema.TABLES "
                       "WHERE table_schema = DATABASE() AND table_name IN "
                       "('usage_usagerecord', 'usage_ledgerrequest')")
        size = int(cursor.fetchone()[0])
    load["settle_s"] = _settle(_knob("BENCH_LEDGER_SETTLE_S", 900))
    print(f"  InnoDB flushed the load's dirty pages in {load['settle_s']} s", flush=True)
    # The page before the big table's writer rounds, and the empty table's rows deleted: today
    # holds the loaded traffic's rows only, not also the rounds' 60,000 each.
    load["rows_today"] = _rows_today()
    started = time.perf_counter()
    load["hours_sealed_today"] = _today_rollup()
    load["today_rollup_s"] = round(time.perf_counter() - started, 2)
    print(f"reports page ({load['rows_today']:,} rows today, {load['hours_sealed_today']} of "
          f"its hours sealed)…", flush=True)
    reports = _reports(config, repeat=repeat, first_day=dt.date.fromisoformat(load["from"][:10]))
    print(f"writer on the big ledger ({total:,} rows)…", flush=True)
    big = _writer(config, writes=writes, concurrency=concurrency, rounds=rounds, tag="big")
    print(f"  {big['rows_per_s_median']:,} rows/s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        version = cursor.fetchone()[0]
    ratio = big["rows_per_s_median"] / empty["rows_per_s_median"]
    result = {
        "server": version, "table_rows": total, "table_and_claims_bytes": size,
        "partitions": len(ledger_partitions()), "load": load, "writer_empty": empty,
        "writer_big": big, "throughput_ratio": round(ratio, 3), "reports": reports,
        "targets": {
            "insert throughput the same (big >= 90 % of empty)": ratio >= SAME_THROUGHPUT,
            "reports p95 <= 0.5 s": all(r["p95_ms"] <= PAGE_BUDGET_S * 1000
                                        for r in reports.values())}}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def markdown(result: dict) -> str:
    e, b = result["writer_empty"], result["writer_big"]
    lines = [f"ledger scenario: {result['table_rows']:,} rows on {result['server']}, "
             f"{result['partitions']} partitions, "
             f"{result['table_and_claims_bytes'] / 2**30:.1f} GiB (ledger + claims)", "",
             "| measure | empty table | big table |", "|---|---|---|",
             f"| ledger writer rows/s (median of {len(e['rounds'])}, {e['concurrency']} writers) "
             f"| {e['rows_per_s_median']:,} | {b['rows_per_s_median']:,} |",
             f"| write p99 ms (median) | {e['write_p99_ms_median']} | {b['write_p99_ms_median']} |",
             *([f"| interleaved rounds, rows/s (median of "
                f"{len(result['writer_interleaved']['rounds']['big'])} each) | "
                f"{result['writer_interleaved']['rows_per_s_median']['empty']:,} | "
                f"{result['writer_interleaved']['rows_per_s_median']['big']:,} |"]
               if "writer_interleaved" in result else []),
             "", "| /reports/ | p50 ms | p95 ms | max ms |", "|---|---|---|---|"]
    for name, r in result["reports"].items():
        lines.append(f"| {name} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} |")
    load = result["load"]
    lines += ["", f"load: ledger {load['ledger_load_s']} s, claims {load['claims_load_s']} s, "
              f"rollups {load['rollup_s']} s, settle {load.get('settle_s', '–')} s; "
              f"{load['rows_per_day']:,} rows/day, {load.get('rows_today', '–')} today when "
              f"the page was read",
              "targets: " + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}"
                                      for k, v in result["targets"].items())]
    return "\n".join(lines)


def available() -> str:
    """Why the scenario cannot run here ("" when it can)."""
    import shutil

    for tool in ("mariadbd", "mariadb-install-db"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        return "mysqlclient is not installed (requirements-prod.lock)"
    return ""


def run() -> dict:
    """Start the private server, run the scenario in a child process, return its figures."""
    sys.path.insert(0, str(ROOT))
    server = _server(os.environ.get("BENCH_LEDGER_BUFFER_POOL") or "2G")
    try:
        url = f"mysql://root@127.0.0.1:{server.port}/{DATABASE}"
        print(f"ledger: private mariadbd on 127.0.0.1:{server.port}", flush=True)
        result = _child_result(["--child"], url)
        pairs = _knob("BENCH_LEDGER_PAIRS", 3)
        if pairs:
            result["writer_interleaved"] = _interleaved(server, url, pairs)
            result["targets"]["insert throughput the same (big >= 90 % of empty)"] = (
                result["writer_interleaved"]["ratio"] >= SAME_THROUGHPUT)
    finally:
        server.destroy()
    return {"timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "loadavg_end": list(os.getloadavg()), "cpus": os.cpu_count(), **result}


def _child_result(args: list[str], url: str) -> dict:
    """Run `bench.ledger_scale ARGS` against the database at `url`, print what it prints, and
    return its RESULT line's figures."""
    child = subprocess.run([sys.executable, "-m", "bench.ledger_scale", *args], cwd=ROOT,
                           env=_child_env(url), stdout=subprocess.PIPE, text=True)
    lines = child.stdout.splitlines()
    for line in lines:
        if not line.startswith("RESULT "):
            print(line, flush=True)
    found = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    if child.returncode or not found:
        raise RuntimeError(f"bench.ledger_scale {' '.join(args)} exited {child.returncode}")
    return found[0]


def _interleaved(server, url: str, pairs: int) -> dict:
    """`pairs` pairs of writer rounds, one on an empty database of the same server and one on
    the big one, each in a process of its own, in the order empty, big, big, empty, ... (so a
    drift of the machine's load over the run weighs on both alike). The empty database is
    migrated by its first round and emptied after each."""
    server.query(f"CREATE DATABASE {DATABASE}_empty CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_unicode_ci", database=None)
    urls = {"big": url, "empty": f"{url}_empty"}
    runs: dict[str, list[dict]] = {"empty": [], "big": []}
    for n in range(pairs):
        for tag in (("empty", "big") if n % 2 == 0 else ("big", "empty")):
            runs[tag].append(_child_result(["--writer", tag], urls[tag])["rounds"][0])
            print(f"  interleaved writer, {tag} table: {runs[tag][-1]['rows_per_s']:,} rows/s",
                  flush=True)
    medians = {tag: statistics.median(r["rows_per_s"] for r in rounds)
               for tag, rounds in runs.items()}
    return {"order": "empty, big, big, empty, ...", "rounds": runs,
            "rows_per_s_median": medians, "ratio": round(medians["big"] / medians["empty"], 3)}


def main() -> int:
    if "--child" in sys.argv:
        return _child()
    if "--writer" in sys.argv:
        return _writer_child(sys.argv[sys.argv.index("--writer") + 1])
    reason = available()
    if reason:
        print(f"skipping ledger: {reason}")
        return 0
    result = run()
    out = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (out / f"ledger-{result['timestamp']}.json").write_text(text)
    (out / "ledger-latest.json").write_text(text)
    print("\n" + markdown(result))
    print(f"\nresults: {out / ('ledger-' + result['timestamp'] + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
