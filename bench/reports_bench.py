"""Finance report benchmark (issue 6; not part of `make test`).

    .venv/bin/python -m bench.reports_bench [--rows 1000000] [--days 60] [--profiles sqlite,mysql]

For each profile, in its own process and on a scratch database: bulk-inserts `--rows` ledger
rows spread evenly over the last `--days` days up to now (40 keys in 8 teams, 3 providers,
8 models), runs the daily rollup for every day, then renders /reports/ for the full range through
Django's test client (signed in as a superuser) and prints the timings: the page must render in
under 1 s. Also timed: the JSON summary grouped by all five dimensions, a grouping CSV, and the
raw-ledger CSV of one day (rows/s). The report's grand total is checked against the ledger's
exact sum.

Profiles: `sqlite` (var/bench-reports.sqlite3, recreated) always; `mysql` (MariaDB database
`gateway_reports_bench` at 127.0.0.1:3306, root without password, recreated) when it answers
and mysqlclient is installed. The server runs with production settings (DEBUG off).
"""
from __future__ import annotations

import argparse
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQLITE_PATH = ROOT / "var" / "bench-reports.sqlite3"
MYSQL_DB = "gateway_reports_bench"
PAGE_BUDGET_S = 1.0


def _mysql_ready() -> bool:
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        return False
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 3306)) == 0


def _profile_env(profile: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(40),
           "GATEWAY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost", "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    if profile == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{SQLITE_PATH}{suffix}").unlink(missing_ok=True)
        env["DATABASE_URL"] = f"sqlite:///{SQLITE_PATH}"
    else:
        import MySQLdb

        conn = MySQLdb.connect(host="127.0.0.1", port=3306, user="root")
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
        conn.cursor().execute(f"CREATE DATABASE {MYSQL_DB} CHARACTER SET utf8mb4")
        conn.close()
        env["DATABASE_URL"] = f"mysql://root@127.0.0.1:3306/{MYSQL_DB}"
    return env


def _timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _child(rows: int, days: int, repeat: int) -> int:
    """Runs inside the profile's process: build the data, time the pages, print the figures."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    import django

    django.setup()
    from datetime import timedelta
    from decimal import Decimal

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client
    from django.utils import timezone

    from providers.models import Price
    from providers.services import api_key_create
    from usage.models import UsageRecord
    from usage.rollups import day_bounds, usage_rollup
    from usage.selectors import UsageFilter, usage_report

    warnings.simplefilter("ignore")  # the test client buffers the streamed CSV, and says so
    call_command("migrate", verbosity=0)
    rng = random.Random(6)
    keys = [api_key_create(name=f"app-{n}", team=f"team-{n % 8}")[0] for n in range(40)]
    providers = ["openai-main", "anthropic-main", "vllm-local"]
    models = [f"model-{n}" for n in range(8)]
    prices = [Price.objects.create(upstream_model=f"up-{m}", input_per_mtok=Decimal("0.15"),
                                   output_per_mtok=Decimal("0.60")) for m in models]

    now = timezone.now()
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    started = time.perf_counter()
    batch = 10000
    for offset in range(0, rows, batch):
        records = []
        for i in range(offset, min(rows, offset + batch)):
            key = keys[rng.randrange(len(keys))]
            m = rng.randrange(len(models))
            records.append(UsageRecord(
                request_id=f"bench-{i}", created_at=start + timedelta(seconds=span * i / rows),
                api_key_id=key.id, key_prefix=key.prefix, team_id=key.team_id,
                surface="openai.chat", public_model=models[m], upstream_model=f"up-{models[m]}",
                provider_name=providers[m % len(providers)], status="ok" if rng.random() > 0.02
                else "upstream_error", http_status=200, input_tokens=rng.randrange(50, 4000),
                output_tokens=rng.randrange(1, 1500), usage_source="reported",
                cost_usd=Decimal(rng.randrange(1, 10 ** 8)) / 10 ** 10, price_id=prices[m].id,
                latency_ms=rng.randrange(100, 5000)))
        with transaction.atomic():
            UsageRecord.objects.bulk_create(records, batch_size=2000)
    insert_s = time.perf_counter() - started

    started = time.perf_counter()
    first_day, today = start.date(), now.date()
    day, groups = first_day, 0
    while day <= today:
        groups += usage_rollup(day=day)
        day += timedelta(days=1)
    rollup_s = time.perf_counter() - started

    User.objects.create_superuser("bench", "bench@localhost", secrets.token_urlsafe(12))
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    query = {"from": first_day.isoformat(), "to": today.isoformat()}

    def page():
        response = client.get("/reports/", query, secure=True)
        assert response.status_code == 200, response.status_code

    def summary():
        response = client.get("/api/usage/summary", {**query, "group_by": "day,team,key,provider,model"},
                              secure=True)
        assert response.status_code == 200, response.status_code

    def group_csv():
        assert client.get("/reports/export.csv", {**query, "group": "key"}, secure=True).status_code == 200

    ledger_day_rows = UsageRecord.objects.between(*day_bounds(today - timedelta(days=1))).count()

    def ledger_csv():
        day_before = (today - timedelta(days=1)).isoformat()
        response = client.get("/reports/ledger.csv", {"from": day_before, "to": day_before},
                              secure=True)
        lines = sum(chunk.count(b"\n") for chunk in response)
        assert lines == ledger_day_rows + 1, (lines, ledger_day_rows)

    first_page = _timed(page, 1)[0]
    pages = _timed(page, repeat)
    summaries = _timed(summary, max(1, repeat // 2))
    csvs = _timed(group_csv, max(1, repeat // 2))
    ledger = _timed(ledger_csv, 1)[0]

    report = usage_report(flt=UsageFilter(start=first_day, end=today), groupings=[])
    exact = sum(UsageRecord.objects.values_list("cost_usd", flat=True).iterator(chunk_size=20000),
                Decimal(0))
    assert report.total.cost_usd == exact, (report.total.cost_usd, exact)
    assert report.total.requests == rows

    vendor = connection.vendor
    median = statistics.median(pages)
    print(f"| {vendor} | {rows:,} rows / {days} days | insert {insert_s:.1f} s | rollup {rollup_s:.1f} s "
          f"({groups:,} daily groups) |")
    print(f"| {vendor} | /reports/ full range | first {first_page * 1000:.0f} ms | median "
          f"{median * 1000:.0f} ms | min {min(pages) * 1000:.0f} ms | max {max(pages) * 1000:.0f} ms "
          f"({repeat} runs) | {'PASS' if median < PAGE_BUDGET_S else 'FAIL'} (< {PAGE_BUDGET_S:g} s) |")
    print(f"| {vendor} | /api/usage/summary group_by=all five | median "
          f"{statistics.median(summaries) * 1000:.0f} ms |")
    print(f"| {vendor} | /reports/export.csv?group=key | median {statistics.median(csvs) * 1000:.0f} ms |")
    print(f"| {vendor} | /reports/ledger.csv one day | {ledger_day_rows:,} rows in {ledger:.2f} s "
          f"({ledger_day_rows / ledger:,.0f} rows/s) |")
    print(f"| {vendor} | grand total | ${report.total.cost_usd} = ledger sum, exact; "
          f"ledger days read: {', '.join(d.isoformat() for d in report.ledger_days)} |")
    return 0 if median < PAGE_BUDGET_S else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=7, help="timed renders of /reports/")
    parser.add_argument("--profiles", default="sqlite,mysql")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.rows, args.days, args.repeat)
    status = 0
    for profile in [p.strip() for p in args.profiles.split(",") if p.strip()]:
        if profile == "mysql" and not _mysql_ready():
            print("| mysql | skipped: MariaDB on 127.0.0.1:3306 or mysqlclient not available |")
            continue
        print(f"# profile {profile}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "bench.reports_bench", "--child", "--rows", str(args.rows),
             "--days", str(args.days), "--repeat", str(args.repeat)],
            cwd=ROOT, env=_profile_env(profile))
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
