"""manage.py ledger_archive on the default database (SQLite here; the chunked-delete path):
whole months exported to gzip'd JSON lines with a manifest, verified, then dropped; reports,
rollups and budget counters unchanged; dry run, refusals, idempotent re-runs, late rows, an
interrupted run and a corrupt file. The MySQL DROP PARTITION path: test_archive_mariadb.py."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from io import StringIO
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from providers.services import api_key_create
from usage.archive import ArchiveRefused, _export, ledger_archive, month_bounds
from usage.budgets import BudgetLimit
from usage.models import BudgetCounter, DailyUsage, LedgerArchive, UsageRecord
from usage.partitions import add_months, month_start
from usage.rollups import budget_counters_reconcile, usage_rollup
from usage.services import usage_record_write
from usage.tasks import usage_rollup_task
from usage.tests.test_reports import ledger_write, make_user, signed_in

pytestmark = pytest.mark.django_db

NOW = datetime.now(timezone.utc)
CURRENT = month_start(NOW)
OLD, OLDER = add_months(CURRENT, -2), add_months(CURRENT, -3)


def at(month: date, day: int, hour: int = 12) -> datetime:
    return datetime(month.year, month.month, day, hour, tzinfo=timezone.utc)


def archive(tmp_path, before: date, *options: str) -> list[str]:
    out = StringIO()
    call_command("ledger_archive", "--before", f"{before:%Y-%m}", "--output-dir", str(tmp_path),
                 *options, stdout=out)
    return out.getvalue().splitlines()


def _without_csrf(content: bytes) -> bytes:
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", content)


def file_rows(path) -> list[dict]:
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines]


@pytest.fixture
def ledger():
    """Rows in OLDER (3, one on its last second), OLD (2) and the current month (1), written
    through the real service with a budget limit charged, and rolled up."""
    key, _ = api_key_create(name="archived", team="finance-team")
    limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal("100"), period="total")
    entries = {OLDER: [], OLD: [], CURRENT: []}
    times = {OLDER: [at(OLDER, 1), at(OLDER, 15),
                     month_bounds(OLDER)[1] - timedelta(microseconds=1)],
             OLD: [at(OLD, 2), at(OLD, 28)], CURRENT: [NOW - timedelta(seconds=1)]}
    for month, moments in times.items():
        for moment in moments:
            entry = ledger_write(at=moment, key=key, cost="0.0123456789")
            entries[month].append(entry)
    # A row charged to the key's budget counter, written twice (a retry: one row, one charge).
    extra = replace(entries[OLD][0], request_id="arch-charged", created_at=at(OLD, 3),
                    cost_usd=Decimal("0.5000000000"))
    assert usage_record_write(entry=extra, charge_limits=(limit,)) is True
    assert usage_record_write(entry=extra, charge_limits=(limit,)) is False
    entries[OLD].append(extra)
    days = {m.date() for moments in times.values() for m in moments} | {at(OLD, 3).date()}
    for day in sorted(days):
        usage_rollup(day=day)
    return entries


def test_whole_months_are_exported_verified_and_dropped(ledger, tmp_path):
    lines = archive(tmp_path, add_months(CURRENT, -1))

    assert lines[0].startswith(f"{OLDER:%Y-%m}: 3 row(s) exported to usage-ledger-{OLDER:%Y-%m}")
    assert lines[1].startswith(f"{OLD:%Y-%m}: 3 row(s) exported")
    assert lines[0].endswith("3 dropped (delete)")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(f["month"], f["part"], f["rows"], f["dropped"]) for f in manifest["files"]] == [
        (f"{OLDER:%Y-%m}", 1, 3, True), (f"{OLD:%Y-%m}", 1, 3, True)]
    for item, month in zip(manifest["files"], (OLDER, OLD)):
        path = tmp_path / item["file"]
        with gzip.open(path, "rb") as raw:
            assert hashlib.sha256(raw.read()).hexdigest() == item["sha256"]
        rows = file_rows(path)
        assert [r["request_id"] for r in rows] == [e.request_id for e in
                                                  sorted(ledger[month], key=lambda e: e.created_at)]
        assert rows[0]["cost_usd"] in ("0.0123456789", "0.5000000000")
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == [
        ledger[CURRENT][0].request_id]


def test_a_report_of_an_archived_month_is_unchanged(ledger, tmp_path):
    client = signed_in(make_user("fin", finance=True))
    start, end = OLDER, month_bounds(OLD)[1].date() - timedelta(days=1)
    query = {"from": start.isoformat(), "to": end.isoformat()}
    pages = ("/reports/", "/reports/export.csv", "/api/usage/summary")
    before = {p: client.get(p, query) for p in pages}
    rollups = list(DailyUsage.objects.order_by("day", "id").values())
    counters = list(BudgetCounter.objects.order_by("id").values())
    assert counters and counters[0]["spent_units"] == 5_000_000_000

    archive(tmp_path, add_months(CURRENT, -1))

    assert UsageRecord.objects.filter(created_at__lt=month_bounds(OLD)[1]).count() == 0
    for page in pages:
        after = client.get(page, query)
        assert after.status_code == before[page].status_code == 200
        assert _without_csrf(after.content) == _without_csrf(before[page].content), page
    assert b"0.5617283945" in before["/api/usage/summary"].content  # 5 x 0.0123456789 + 0.5
    assert list(DailyUsage.objects.order_by("day", "id").values()) == rollups
    assert list(BudgetCounter.objects.order_by("id").values()) == counters
    # The beat's rollup of an archived day keeps its aggregates (the ledger has none left),
    # and the reconciliation leaves the counters of periods with archived rows alone.
    usage_rollup_task(day=at(OLD, 2).date().isoformat())
    call_command("usage_rollup", "--day", at(OLDER, 15).date().isoformat(), stdout=StringIO())
    assert list(DailyUsage.objects.order_by("day", "id").values()) == rollups
    assert budget_counters_reconcile() == 0
    assert list(BudgetCounter.objects.order_by("id").values()) == counters


def test_dry_run_writes_and_drops_nothing(ledger, tmp_path):
    lines = archive(tmp_path / "out", add_months(CURRENT, -1), "--dry-run")

    assert lines == [f"{OLDER:%Y-%m}: 3 row(s) would be archived",
                     f"{OLD:%Y-%m}: 3 row(s) would be archived"]
    assert not (tmp_path / "out").exists()
    assert UsageRecord.objects.count() == 7
    assert not LedgerArchive.objects.exists()


def test_a_rerun_changes_nothing_and_late_rows_go_to_a_new_part(ledger, tmp_path):
    archive(tmp_path, add_months(CURRENT, -1))
    manifest = (tmp_path / "manifest.json").read_text()

    assert archive(tmp_path, add_months(CURRENT, -1)) == ["nothing to archive"]
    assert (tmp_path / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", f"usage-ledger-{OLDER:%Y-%m}.jsonl.gz",
        f"usage-ledger-{OLD:%Y-%m}.jsonl.gz"]

    late = ledger_write(at=at(OLDER, 20))  # e.g. a spool replayed after a long outage
    lines = archive(tmp_path, add_months(CURRENT, -1))

    part2 = f"usage-ledger-{OLDER:%Y-%m}.part2.jsonl.gz"
    assert lines == [f"{OLDER:%Y-%m}: 1 row(s) exported to {part2}; 1 dropped (delete)",
                     f"{OLD:%Y-%m}: already archived"]
    assert [r["request_id"] for r in file_rows(tmp_path / part2)] == [late.request_id]
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert [(f["month"], f["part"], f["rows"]) for f in files] == [
        (f"{OLDER:%Y-%m}", 1, 3), (f"{OLDER:%Y-%m}", 2, 1), (f"{OLD:%Y-%m}", 1, 3)]


def test_an_interrupted_run_finishes_its_drop_without_exporting_again(ledger, tmp_path):
    _export(OLDER, tmp_path, NOW)  # exported and recorded; the run stopped before dropping

    lines = archive(tmp_path, OLD)

    assert lines == [f"{OLDER:%Y-%m}: 3 row(s) dropped (delete), exported earlier to "
                     f"usage-ledger-{OLDER:%Y-%m}.jsonl.gz"]
    assert list(LedgerArchive.objects.values_list("part", "rows", "dropped")) == [(1, 3, True)]
    assert UsageRecord.objects.between(*month_bounds(OLDER)).count() == 0


def test_a_file_that_does_not_verify_drops_nothing(ledger, tmp_path):
    record = _export(OLDER, tmp_path, NOW)
    rows = file_rows(record.path)
    with gzip.open(record.path, "wt") as out:  # one row lost
        out.writelines(json.dumps(r) + "\n" for r in rows[:-1])

    with pytest.raises(CommandError, match="verification failed.*2 rows.*recorded 3 rows"):
        archive(tmp_path, OLD)
    assert UsageRecord.objects.between(*month_bounds(OLDER)).count() == 3
    assert not LedgerArchive.objects.filter(dropped=True).exists()


def test_the_current_month_and_bad_input_are_refused(ledger, tmp_path):
    with pytest.raises(CommandError, match="current month"):
        archive(tmp_path, add_months(CURRENT, 1))
    with pytest.raises(CommandError, match="is not a month"):
        call_command("ledger_archive", "--before", "2026-13", "--output-dir", str(tmp_path))
    # The month before the current one stays until its rollups are final (2 days after it).
    with pytest.raises(ArchiveRefused):
        ledger_archive(before=CURRENT, output_dir=tmp_path, now=at(CURRENT, 2, 0))
    assert ledger_archive(before=CURRENT, output_dir=tmp_path, dry_run=True,
                          now=at(CURRENT, 3, 0))
    assert UsageRecord.objects.count() == 7
    assert not tmp_path.joinpath("manifest.json").exists()
