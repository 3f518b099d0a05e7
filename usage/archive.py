"""Archive whole months of the ledger to compressed files and drop them (`manage.py
ledger_archive`, docs/ledger.md "Archiving old months").

Per month, oldest first: the month's rows, in (created_at, id) order, go to
`<output dir>/usage-ledger-YYYY-MM.jsonl.gz` (one JSON object per line: every column by its
attribute name; decimals as strings, times in ISO 8601 UTC). The file is written under a
temporary name, re-read (line count and SHA-256 of its uncompressed bytes), renamed into place
and recorded (usage.models.LedgerArchive, and `manifest.json` in the output directory); only
then do the rows leave the ledger: DROP PARTITION where the month has its own partition and it
holds exactly the exported rows (usage.partitions), else a chunked delete of exactly the ids in
the file. A row of an archived month that arrives later goes to a further part
(`usage-ledger-YYYY-MM.part2.jsonl.gz`) on the next run.

Re-runs are idempotent: a month with no rows left is skipped; a recorded file whose rows were
not dropped yet (a run stopped between the two) is verified again and its drop finished, never
exported twice. Budget counters and the daily rollups (what reports read) are not touched; a
month is archivable only once its rollups are final (ARCHIVE_GRACE after it ended: the beat
re-rolls yesterday).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from usage.models import LedgerArchive, LedgerRequest, UsageRecord
from usage.partitions import (
    add_months, ledger_partition_count, ledger_partition_drop, month_start,
)

ARCHIVE_GRACE = timedelta(days=2)
EXPORT_CHUNK = 5000
DELETE_CHUNK = 2000
MANIFEST = "manifest.json"


@functools.cache
def _fields() -> tuple[str, ...]:
    return tuple(f.attname for f in UsageRecord._meta.concrete_fields)


class ArchiveRefused(ValueError):
    """The months asked for cannot be archived (the current month, or one whose rollups are
    not final yet)."""


class ArchiveCorrupt(RuntimeError):
    """A file does not hold what its record says: nothing is dropped."""


@dataclass(slots=True)
class MonthResult:
    month: date
    rows: int = 0  # rows exported (or, with dry_run, that would be)
    files: list[str] = field(default_factory=list)
    dropped: int = 0  # rows that left the ledger in this run
    method: str = ""  # "drop_partition", "delete" or "" (nothing dropped)
    skipped: str = ""  # why nothing was done


def parse_month(text: str) -> date:
    """`YYYY-MM` to the month's first day; ValueError otherwise."""
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
    return date(parsed.year, parsed.month, 1)


def latest_archivable(now: datetime) -> date:
    """The first month that may not be archived yet: months before it are archivable."""
    return month_start(now - ARCHIVE_GRACE)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    utc = dt_timezone.utc
    return (datetime.combine(month, time.min, tzinfo=utc),
            datetime.combine(add_months(month, 1), time.min, tzinfo=utc))


def archived_months() -> set[date]:
    """Months with an archived (dropped) file: their rows are no longer all in the ledger, so
    nothing may recompute aggregates of them from it."""
    return set(LedgerArchive.objects.filter(dropped=True).values_list("month", flat=True))


def day_archived(day: date) -> bool:
    return LedgerArchive.objects.filter(month=month_start(day), dropped=True).exists()


def _encode(value):
    if isinstance(value, datetime):
        return timezone.localtime(value, dt_timezone.utc).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _month_rows(month: date) -> Iterator[dict]:
    """The month's rows in (created_at, id) order, in keyset pages (no cursor held open)."""
    start, end = month_bounds(month)
    base = UsageRecord.objects.between(start, end).order_by("created_at", "pk")
    page = list(base.values(*_fields())[:EXPORT_CHUNK])
    while page:
        yield from page
        last = page[-1]
        page = list(base.after(last["created_at"], last["id"]).values(*_fields())[:EXPORT_CHUNK])


@dataclass(frozen=True, slots=True)
class FileSummary:
    rows: int
    sha256: str
    ids: list[int]
    request_ids: list[str]
    first_created_at: str | None
    last_created_at: str | None


def _write(path: Path, rows: Iterator[dict]) -> FileSummary:
    digest, count, ids, request_ids, first, last = hashlib.sha256(), 0, [], [], None, None
    # mtime=0: the same rows give the same bytes (a re-run's file compares equal).
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        for row in rows:
            line = (json.dumps({k: _encode(row[k]) for k in _fields()}, separators=(",", ":"))
                    + "\n").encode()
            out.write(line)
            digest.update(line)
            count += 1
            ids.append(row["id"])
            request_ids.append(row["request_id"])
            first = first or row["created_at"]
            last = row["created_at"]
        raw.flush()
    with open(path, "rb") as written:
        os.fsync(written.fileno())
    return FileSummary(rows=count, sha256=digest.hexdigest(), ids=ids, request_ids=request_ids,
                       first_created_at=_encode(first) if first else None,
                       last_created_at=_encode(last) if last else None)


def file_read(path: Path) -> FileSummary:
    """Re-read an archive file: its line count, SHA-256 of the uncompressed lines, and ids.
    Raises ArchiveCorrupt when it is unreadable or a line is not a ledger row."""
    digest, count, ids, request_ids, first, last = hashlib.sha256(), 0, [], [], None, None
    try:
        with gzip.open(path, "rb") as lines:
            for line in lines:
                digest.update(line)
                row = json.loads(line)
                ids.append(int(row["id"]))
                request_ids.append(str(row["request_id"]))
                first = first or row["created_at"]
                last = row["created_at"]
                count += 1
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveCorrupt(f"{path}: {exc}") from exc
    return FileSummary(rows=count, sha256=digest.hexdigest(), ids=ids, request_ids=request_ids,
                       first_created_at=first, last_created_at=last)


def _verified(record: LedgerArchive) -> FileSummary:
    summary = file_read(Path(record.path))
    if (summary.rows, summary.sha256) != (record.rows, record.sha256):
        raise ArchiveCorrupt(
            f"{record.path}: {summary.rows} rows, sha256 {summary.sha256}; recorded "
            f"{record.rows} rows, sha256 {record.sha256}: nothing dropped")
    return summary


def _file_name(month: date, part: int) -> str:
    return (f"usage-ledger-{month:%Y-%m}.jsonl.gz" if part == 1
            else f"usage-ledger-{month:%Y-%m}.part{part}.jsonl.gz")


def manifest_write(output_dir: Path) -> Path:
    """`manifest.json` in `output_dir`: every recorded file there, with its rows and checksum
    (written to a temporary name and renamed: a reader never sees half of it)."""
    here = str(output_dir.resolve())
    files = [{"month": f"{r.month:%Y-%m}", "part": r.part, "file": Path(r.path).name,
              "rows": r.rows, "sha256": r.sha256, "format": "jsonl.gz",
              "first_created_at": _encode(r.first_created_at) if r.first_created_at else None,
              "last_created_at": _encode(r.last_created_at) if r.last_created_at else None,
              "dropped": r.dropped, "archived_at": _encode(r.archived_at)}
             for r in LedgerArchive.objects.order_by("month", "part")
             if str(Path(r.path).parent) == here]
    path = output_dir / MANIFEST
    tmp = output_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"table": UsageRecord._meta.db_table,
                               "checksum": "sha256 of the uncompressed JSON lines",
                               "files": files}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _export(month: date, output_dir: Path, now: datetime) -> LedgerArchive:
    part = (LedgerArchive.objects.filter(month=month).order_by("-part")
            .values_list("part", flat=True).first() or 0) + 1
    final = output_dir / _file_name(month, part)
    tmp = output_dir / f".{final.name}.tmp"
    written = _write(tmp, _month_rows(month))
    reread = file_read(tmp)
    if (reread.rows, reread.sha256) != (written.rows, written.sha256):
        tmp.unlink(missing_ok=True)
        raise ArchiveCorrupt(f"{tmp}: re-read {reread.rows} rows, wrote {written.rows}")
    os.replace(tmp, final)
    record = LedgerArchive.objects.create(
        month=month, part=part, path=str(final.resolve()), rows=written.rows,
        sha256=written.sha256, archived_at=now,
        first_created_at=datetime.fromisoformat(written.first_created_at),
        last_created_at=datetime.fromisoformat(written.last_created_at))
    manifest_write(output_dir)
    return record


def _drop(record: LedgerArchive, result: MonthResult) -> None:
    """The recorded, verified rows leave the ledger; the record is marked dropped."""
    summary = _verified(record)
    start, end = month_bounds(record.month)
    in_month = UsageRecord.objects.between(start, end)
    # The partition goes whole only when it holds exactly the file's rows; otherwise (no
    # partition, rows that arrived since, a drop done by a run that stopped before marking
    # the record) exactly the file's ids are deleted.
    if ledger_partition_count(month=record.month) == summary.rows \
            and in_month.count() == summary.rows:
        ledger_partition_drop(month=record.month)
        result.method = "drop_partition"
        result.dropped += summary.rows
        for i in range(0, len(summary.ids), DELETE_CHUNK):
            LedgerRequest.objects.filter(
                request_id__in=summary.request_ids[i:i + DELETE_CHUNK]).delete()
    else:
        for i in range(0, len(summary.ids), DELETE_CHUNK):
            with transaction.atomic():
                deleted, _ = in_month.filter(pk__in=summary.ids[i:i + DELETE_CHUNK]).delete()
                LedgerRequest.objects.filter(
                    request_id__in=summary.request_ids[i:i + DELETE_CHUNK]).delete()
            result.dropped += deleted
        result.method = result.method or "delete"
    LedgerArchive.objects.filter(pk=record.pk).update(dropped=True)
    manifest_write(Path(record.path).parent)


def ledger_archive(*, before: date, output_dir: Path, dry_run: bool = False,
                   now: datetime | None = None) -> list[MonthResult]:
    """Archive every month before `before` (a month's first day) that still has ledger rows,
    oldest first; returns one MonthResult per month considered. Raises ArchiveRefused when
    `before` reaches a month that is not archivable yet, ArchiveCorrupt when a file does not
    verify (that month's rows stay)."""
    now = now or timezone.now()
    limit = latest_archivable(now)
    if before > limit:
        raise ArchiveRefused(
            f"--before {before:%Y-%m} reaches {add_months(before, -1):%Y-%m}, which is the "
            f"current month or ended less than {ARCHIVE_GRACE.days} days ago (its rollups may "
            f"still change); the latest allowed is --before {limit:%Y-%m}")
    earliest = (UsageRecord.objects.order_by("created_at")
                .values_list("created_at", flat=True).first())
    pending = set(LedgerArchive.objects.filter(dropped=False, month__lt=before)
                  .values_list("month", flat=True))
    with_rows = [] if earliest is None else _months(month_start(earliest), before)
    months = sorted({*pending, *with_rows})
    if not dry_run:
        output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for month in months:
        result = MonthResult(month=month)
        results.append(result)
        for record in LedgerArchive.objects.filter(month=month, dropped=False).order_by("part"):
            if dry_run:
                result.skipped = f"part {record.part} exported, its drop not finished"
                continue
            _drop(record, result)
            result.files.append(record.path)
        start, end = month_bounds(month)
        count = UsageRecord.objects.between(start, end).count()
        if count == 0:
            result.skipped = result.skipped or ("already archived" if LedgerArchive.objects
                                                .filter(month=month).exists() else "no rows")
            continue
        if dry_run:
            result.rows = count
            continue
        record = _export(month, output_dir, now)
        result.rows += record.rows
        result.files.append(record.path)
        _drop(record, result)
    return results


def _months(first: date, before: date) -> list[date]:
    months, month = [], first
    while month < before:
        months.append(month)
        month = add_months(month, 1)
    return months
