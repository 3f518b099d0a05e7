"""The ledger's monthly partitions (usage.partitions): the DDL generated for MySQL/MariaDB and
TiDB as pure functions (TiDB cannot run here: its statements are checked as text, and executed
on MariaDB in test_partitions_mariadb.py, where TiDB's attributes are comments), and, where the
test database is MySQL-family (CI's MariaDB, or DATABASE_URL at a private mariadbd), the
migrated table itself: the database refuses a second row of a request, months are added ahead
and rows leave pmax, and an archived month's partition is dropped."""
from __future__ import annotations

from dataclasses import replace
from io import StringIO
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from usage.archive import ledger_archive, month_bounds
from usage.models import DailyUsage, LedgerRequest, UsageRecord
from usage.partitions import (
    CATCH_ALL, CLAIM_WINDOW, Partition, add_months, ledger_claims_purge, ledger_partitions,
    ledger_partitions_ensure, ledger_partitions_extend_back, month_range, month_start,
    months_missing, mysql_partition_statements, partition_clause, partition_name,
    reorganize_statement, server_flavour, split_first_statement, tidb_create_statement,
)
from usage.rollups import usage_rollup
from usage.services import LedgerWrite, _rows_insert, usage_record_write, usage_records_write
from usage.tests.test_reports import ledger_write

# TiDB v7.5's SHOW CREATE TABLE of the ledger as Django's MySQL backend creates it (TiDB drops
# the CHECK constraints and marks the integer primary key clustered).
TIDB_SHOW_CREATE = """CREATE TABLE `usage_usagerecord` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `request_id` varchar(64) NOT NULL,
  `created_at` datetime(6) NOT NULL,
  `api_key_id` bigint(20) DEFAULT NULL,
  `price_id` bigint(20) DEFAULT NULL,
  `cost_usd` decimal(20,10) NOT NULL,
  PRIMARY KEY (`id`) /*T![clustered_index] CLUSTERED */,
  UNIQUE KEY `request_id` (`request_id`),
  KEY `usage_usagerecord_price_id_a7b4adaa_fk_providers_price_id` (`price_id`),
  KEY `usage_usage_api_key_0a5417_idx` (`api_key_id`,`created_at`),
  CONSTRAINT `usage_usagerecord_api_key_id_93ec9f60_fk_providers_apikey_id` FOREIGN KEY (`api_key_id`) REFERENCES `providers_apikey` (`id`),
  CONSTRAINT `usage_usagerecord_price_id_a7b4adaa_fk_providers_price_id` FOREIGN KEY (`price_id`) REFERENCES `providers_price` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci AUTO_INCREMENT=30001"""


def test_the_server_flavour_comes_from_its_version_string():
    assert server_flavour("8.0.11-TiDB-v7.5.1") == "tidb"
    assert server_flavour("5.7.25-TiDB-v6.5.0") == "tidb"
    assert server_flavour("10.11.19-MariaDB-0+deb12u1") == "mariadb"
    assert server_flavour("8.0.36") == "mysql"


def test_one_partition_per_month_then_a_catch_all():
    assert partition_clause([date(2026, 11, 1), date(2026, 12, 1)]) == (
        "PARTITION BY RANGE COLUMNS(`created_at`) ("
        "PARTITION p202611 VALUES LESS THAN ('2026-12-01 00:00:00'), "
        "PARTITION p202612 VALUES LESS THAN ('2027-01-01 00:00:00'), "
        "PARTITION pmax VALUES LESS THAN (MAXVALUE))")
    assert add_months(date(2026, 12, 1), 1) == date(2027, 1, 1)
    assert add_months(date(2027, 1, 1), -13) == date(2025, 12, 1)
    assert partition_name(date(2027, 3, 1)) == "p202703"


def test_mysql_keys_carry_the_partitioning_column_and_foreign_keys_go():
    assert mysql_partition_statements(
        table="usage_usagerecord", foreign_keys=["fk_key", "fk_price"], unique_index="request_id",
        months=[date(2026, 12, 1)]) == [
        "ALTER TABLE `usage_usagerecord` DROP FOREIGN KEY `fk_key`",
        "ALTER TABLE `usage_usagerecord` DROP FOREIGN KEY `fk_price`",
        "ALTER TABLE `usage_usagerecord` DROP PRIMARY KEY, ADD PRIMARY KEY (`id`, `created_at`), "
        "DROP INDEX `request_id`, ADD UNIQUE KEY `usage_usagerecord_request_id_created_at_uniq` "
        "(`request_id`, `created_at`) PARTITION BY RANGE COLUMNS(`created_at`) ("
        "PARTITION p202612 VALUES LESS THAN ('2027-01-01 00:00:00'), "
        "PARTITION pmax VALUES LESS THAN (MAXVALUE))"]


def test_tidb_gets_an_auto_random_clustered_key_in_a_rebuilt_table():
    sql = tidb_create_statement(show_create=TIDB_SHOW_CREATE, new_table="ledger_new",
                                months=[date(2026, 12, 1)])
    lines = sql.splitlines()
    assert lines[0] == "CREATE TABLE `ledger_new` ("
    assert lines[1] == ("  `id` bigint(20) NOT NULL /*T![auto_rand] AUTO_RANDOM(5) */,")
    assert "  PRIMARY KEY (`id`,`created_at`) /*T![clustered_index] CLUSTERED */," in lines
    assert ("  UNIQUE KEY `usage_usagerecord_request_id_created_at_uniq` "
            "(`request_id`,`created_at`),") in lines
    assert "  KEY `usage_usage_api_key_0a5417_idx` (`api_key_id`,`created_at`)" in lines
    assert "AUTO_INCREMENT" not in sql and "FOREIGN KEY" not in sql
    assert lines[-2] == ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    assert lines[-1] == partition_clause([date(2026, 12, 1)])
    with pytest.raises(ValueError):
        tidb_create_statement(show_create=TIDB_SHOW_CREATE.replace(" AUTO_INCREMENT,", ","),
                              new_table="x", months=[date(2026, 12, 1)])
    with pytest.raises(ValueError):
        tidb_create_statement(show_create="SELECT 1", new_table="x", months=[])


def test_older_months_are_split_out_of_the_first_partition():
    assert split_first_statement(table="t", first=date(2026, 12, 1),
                                 months=[date(2026, 10, 1), date(2026, 11, 1)]) == (
        "ALTER TABLE `t` REORGANIZE PARTITION p202612 INTO ("
        "PARTITION p202610 VALUES LESS THAN ('2026-11-01 00:00:00'), "
        "PARTITION p202611 VALUES LESS THAN ('2026-12-01 00:00:00'), "
        "PARTITION p202612 VALUES LESS THAN ('2027-01-01 00:00:00'))")


def test_months_ahead_are_split_out_of_the_catch_all_once():
    parts = [Partition("p202611", date(2026, 11, 1), 0), Partition("p202612", date(2026, 12, 1), 0),
             Partition(CATCH_ALL, None, 0)]
    now = datetime(2026, 12, 15, tzinfo=timezone.utc)
    missing = months_missing(partitions=parts, now=now, ahead=3)
    assert missing == [date(2027, 1, 1), date(2027, 2, 1), date(2027, 3, 1)]
    assert reorganize_statement(table="t", months=missing[:1]) == (
        "ALTER TABLE `t` REORGANIZE PARTITION pmax INTO ("
        "PARTITION p202701 VALUES LESS THAN ('2027-02-01 00:00:00'), "
        "PARTITION pmax VALUES LESS THAN (MAXVALUE))")
    done = parts[:2] + [Partition(partition_name(m), m, 0) for m in missing] + parts[2:]
    assert months_missing(partitions=done, now=now, ahead=3) == []
    assert months_missing(partitions=parts[:2], now=now, ahead=3) == []  # no pmax: not ours
    assert months_missing(partitions=[], now=now, ahead=3) == []


mysql_only = pytest.mark.skipif(connection.vendor != "mysql",
                                reason="the ledger is partitioned on MySQL-family databases only")
NOW = datetime.now(timezone.utc)
CURRENT = month_start(NOW)


def _in_partition(name: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT request_id FROM usage_usagerecord PARTITION ({name}) "
                       "ORDER BY request_id")
        return [row[0] for row in cursor.fetchall()]


@mysql_only
@pytest.mark.django_db
def test_the_migrated_ledger_is_partitioned_by_month_with_a_catch_all():
    names = [p.name for p in ledger_partitions()]
    assert names[-1] == CATCH_ALL
    assert [partition_name(add_months(CURRENT, i)) for i in range(4)] == \
        [n for n in names if n >= partition_name(CURRENT)][:4]
    with connection.cursor() as cursor:
        cursor.execute("SHOW CREATE TABLE usage_usagerecord")
        ddl = cursor.fetchone()[1]
    assert "PRIMARY KEY (`id`,`created_at`)" in ddl
    assert ("UNIQUE KEY `usage_usagerecord_request_id_created_at_uniq` "
            "(`request_id`,`created_at`)") in ddl
    assert "FOREIGN KEY" not in ddl


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_a_second_row_of_a_request():
    first = ledger_write(at=NOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        _rows_insert([first])  # the database's own unique key, no check of ours before it
    assert usage_record_write(entry=first) is False
    # A replay that carries another created_at (another month, another partition): the
    # request id's claim refuses it all the same.
    moved = replace(first, created_at=first.created_at - timedelta(days=200))
    assert usage_record_write(entry=moved) is False
    other = replace(first, request_id="part-second")
    usage_records_write(writes=[LedgerWrite(entry=moved), LedgerWrite(entry=other)])
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == \
        sorted([first.request_id, "part-second"])
    assert sorted(LedgerRequest.objects.values_list("request_id", "created_at")) == sorted(
        [(first.request_id, first.created_at), ("part-second", first.created_at)])


@pytest.mark.skipif(connection.vendor == "mysql", reason="the other backends")
@pytest.mark.django_db
def test_elsewhere_the_ledger_alone_keeps_request_ids_unique():
    first = ledger_write(at=NOW)
    assert usage_record_write(entry=replace(first, created_at=NOW - timedelta(days=200))) is False
    assert UsageRecord.objects.count() == 1
    assert not LedgerRequest.objects.exists()


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_months_are_added_ahead_and_rows_leave_the_catch_all():
    far = month_start(add_months(CURRENT, 8))
    row = ledger_write(at=datetime(far.year, far.month, 3, tzinfo=timezone.utc))
    if partition_name(far) not in {p.name for p in ledger_partitions()}:
        assert _in_partition(CATCH_ALL) == [row.request_id]

    added = ledger_partitions_ensure(ahead=8)

    assert partition_name(far) in {p.name for p in ledger_partitions()}
    assert added == [] or added[-1] == partition_name(far)
    assert _in_partition(partition_name(far)) == [row.request_id]
    assert _in_partition(CATCH_ALL) == []
    assert ledger_partitions_ensure(ahead=8) == []


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_an_archived_month_is_dropped_as_a_partition(tmp_path):
    old = add_months(CURRENT, -3)
    # The migration ran on an empty table: its first partition, the current month's, holds
    # everything older. manage.py ledger_partitions --since gives older months their own.
    first = ledger_partitions()[0].month
    call_command("ledger_partitions", "--since", f"{old:%Y-%m}", stdout=StringIO())
    names = [p.name for p in ledger_partitions()]
    assert names[:names.index(partition_name(first)) + 1] == [
        partition_name(m) for m in month_range(min(old, first), first)]
    assert ledger_partitions_extend_back(since=old) == []
    rows = [ledger_write(at=datetime(old.year, old.month, d, tzinfo=timezone.utc),
                         cost="0.2500000000") for d in (1, 9, 27)]
    usage_rollup(day=rows[1].created_at.date())
    rollups = list(DailyUsage.objects.values())

    results = ledger_archive(before=add_months(old, 1), output_dir=tmp_path)

    assert [(r.month, r.rows, r.dropped, r.method) for r in results] == [
        (old, 3, 3, "drop_partition")]
    assert partition_name(old) not in {p.name for p in ledger_partitions()}
    assert not UsageRecord.objects.between(*month_bounds(old)).exists()
    assert not LedgerRequest.objects.filter(request_id__in=[r.request_id for r in rows]).exists()
    assert list(DailyUsage.objects.values()) == rollups
    assert rollups and Decimal(rollups[0]["cost_usd"]) == Decimal("0.25")
    # A late row of the month now lands in the next partition and leaves by a delete.
    late = ledger_write(at=datetime(old.year, old.month, 28, tzinfo=timezone.utc))
    again = ledger_archive(before=add_months(old, 1), output_dir=tmp_path)
    assert [(r.rows, r.dropped, r.method) for r in again] == [(1, 1, "delete")]
    assert not UsageRecord.objects.filter(request_id=late.request_id).exists()


@pytest.mark.django_db(transaction=True)
def test_claims_older_than_their_window_are_purged_and_the_ledger_still_refuses_a_retry():
    old = ledger_write(at=NOW - CLAIM_WINDOW - timedelta(days=1))
    recent = ledger_write(at=NOW - timedelta(days=1))
    LedgerRequest.objects.bulk_create([  # what the writer claimed (nothing on SQLite)
        LedgerRequest(request_id=e.request_id, created_at=e.created_at) for e in (old, recent)
    ], ignore_conflicts=True)

    assert ledger_claims_purge(now=NOW) == 1
    assert list(LedgerRequest.objects.values_list("request_id", flat=True)) == [recent.request_id]
    assert ledger_claims_purge(now=NOW) == 0
    # A retry of the old request carries its created_at: the ledger's own key refuses it.
    assert usage_record_write(entry=old) is False
    assert UsageRecord.objects.filter(request_id=old.request_id).count() == 1

