"""Monthly range partitions of the ledger table on MySQL, MariaDB and TiDB (docs/ledger.md,
"A ledger that lasts for years").

The table is partitioned by `RANGE COLUMNS(created_at)`, one partition per UTC month named
`pYYYYMM` (rows created before the first day of the next month), and a catch-all `pmax`
(`VALUES LESS THAN (MAXVALUE)`) so an insert never fails for want of a partition.
`ledger_partitions_ensure` (Celery beat `usage.ledger_partitions`, `manage.py ledger_partitions`)
splits months out of `pmax` ahead of time; `manage.py ledger_archive` drops old ones.

MySQL, MariaDB and TiDB require every unique key of a partitioned table to contain the
partitioning column, so the ledger's primary key becomes (id, created_at) and its request id key
(request_id, created_at). That alone would make a request's row unique only while every writer
of it carries the same created_at (they do: the admission's, in the spooled entry and in the
intent the reaper turns into a `lost` row), and a replay with another created_at would get a
second row. So the request id stays unique in the database through a small unpartitioned table,
usage.models.LedgerRequest (request_id primary key), into which usage.services inserts the
batch's ids in the rows' transaction: a second row of a request fails there with the
IntegrityError the idempotent writers already handle. Claims are kept CLAIM_WINDOW (40 days,
ledger_claims_purge), so that table stays the size of a month's traffic. Partitioned InnoDB
tables cannot hold foreign keys, so the ledger's three (key, team, price) are dropped there; Django's
on_delete=PROTECT still refuses to delete a key, team or price with usage (Django checks it).

TiDB: an AUTO_INCREMENT primary key sends every insert to the region at the end of the key
range (one TiKV node), so there the id becomes `AUTO_RANDOM` (random high shard bits) in a
clustered (id, created_at) primary key. TiDB cannot change a clustered primary key in place,
so the table is rebuilt: created from its own SHOW CREATE TABLE, copied in id chunks, swapped
with one RENAME and topped up with the rows written meanwhile.

The functions that build SQL are pure (text in, text out) and tested without a server; the
`*_apply`/`*_ensure` functions run them on a connection.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone as dt_timezone

from django.db import connections, router

logger = logging.getLogger(__name__)

PARTITION_COLUMN = "created_at"
CATCH_ALL = "pmax"
UNIQUE_NAME = "usage_usagerecord_request_id_created_at_uniq"
# Months split out of pmax ahead of the current one (the beat task runs daily, so three months
# leave weeks of slack if it stops).
AHEAD_MONTHS = 3
# AUTO_RANDOM(5): 32 shards, the TiDB default; the remaining 58 bits still count up within a
# shard, far more ids than a ledger will hold.
AUTO_RANDOM_SHARD_BITS = 5
COPY_CHUNK = 10_000
# Claims kept (ledger_claims_purge): longer than any retry, spool replay or reap, and than a
# month, so a request is guarded by its claim across a month boundary.
CLAIM_WINDOW = timedelta(days=40)
# TiDB's catch-up after the swap re-copies the rows created this long before the copy started
# (INSERT IGNORE skips those already copied): a request's row is written when it ends, and a
# spooled row may land hours after its created_at.
CATCH_UP = timedelta(days=1)


def server_flavour(version: str) -> str:
    """"tidb", "mariadb" or "mysql" from the server's `SELECT VERSION()` (TiDB answers e.g.
    "8.0.11-TiDB-v7.5.1", MariaDB "10.11.6-MariaDB-0+deb12u1")."""
    if "tidb" in version.lower():
        return "tidb"
    if "mariadb" in version.lower():
        return "mariadb"
    return "mysql"


def month_start(at: date | datetime) -> date:
    return date(at.year, at.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"p{month:%Y%m}"


def partition_month(name: str) -> date | None:
    """The month of a `pYYYYMM` partition; None for pmax or any other name."""
    match = re.fullmatch(r"p(\d{4})(\d{2})", name)
    return date(int(match[1]), int(match[2]), 1) if match else None


def month_range(first: date, last: date) -> list[date]:
    """Every month from `first` to `last`, both included."""
    months, month = [], month_start(first)
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


def partition_definitions(months: list[date], *, catch_all: bool = True) -> str:
    """`PARTITION pYYYYMM VALUES LESS THAN ('<next month> 00:00:00'), ...` (and pmax)."""
    parts = [f"PARTITION {partition_name(m)} VALUES LESS THAN "
             f"('{add_months(m, 1):%Y-%m-%d} 00:00:00')" for m in months]
    if catch_all:
        parts.append(f"PARTITION {CATCH_ALL} VALUES LESS THAN (MAXVALUE)")
    return ", ".join(parts)


def partition_clause(months: list[date]) -> str:
    return (f"PARTITION BY RANGE COLUMNS(`{PARTITION_COLUMN}`) "
            f"({partition_definitions(months)})")


def mysql_partition_statements(*, table: str, foreign_keys: list[str], unique_index: str | None,
                               months: list[date]) -> list[str]:
    """MySQL/MariaDB: the statements that partition the unpartitioned ledger `table` in place
    (one table copy: keys and partitioning in one ALTER). `foreign_keys`: the constraint names
    to drop first; `unique_index`: the name of the index that makes request_id unique (None
    when it is already gone)."""
    statements = [f"ALTER TABLE `{table}` DROP FOREIGN KEY `{name}`" for name in foreign_keys]
    keys = ["DROP PRIMARY KEY", f"ADD PRIMARY KEY (`id`, `{PARTITION_COLUMN}`)"]
    if unique_index:
        keys.append(f"DROP INDEX `{unique_index}`")
    keys.append(f"ADD UNIQUE KEY `{UNIQUE_NAME}` (`request_id`, `{PARTITION_COLUMN}`)")
    statements.append(f"ALTER TABLE `{table}` {', '.join(keys)} {partition_clause(months)}")
    return statements


def tidb_create_statement(*, show_create: str, new_table: str, months: list[date]) -> str:
    """TiDB: the CREATE TABLE of the partitioned ledger, from the unpartitioned table's own
    `SHOW CREATE TABLE` text: renamed to `new_table`; `id` AUTO_RANDOM instead of
    AUTO_INCREMENT; a clustered (id, created_at) primary key; request_id unique with
    created_at; no foreign keys; the table's AUTO_INCREMENT option dropped; the partitions.
    Raises ValueError when the text is not the ledger table as Django creates it."""
    lines = show_create.strip().splitlines()
    header = re.match(r"CREATE TABLE `[^`]+` \($", lines[0])
    if not header:
        raise ValueError("not a SHOW CREATE TABLE text")
    body, tail = lines[1:-1], lines[-1]
    columns: list[str] = []
    seen_id = seen_unique = False
    for line in body:
        item = line.strip().rstrip(",")
        if item.startswith("`id` "):
            if "AUTO_INCREMENT" not in item.upper():
                raise ValueError("the id column is not AUTO_INCREMENT")
            item = re.sub(r"(?i)\s*/\*T!\[auto_rand\][^*]*\*/|\s+AUTO_INCREMENT", "", item)
            item = f"{item} /*T![auto_rand] AUTO_RANDOM({AUTO_RANDOM_SHARD_BITS}) */"
            seen_id = True
        elif item.startswith("PRIMARY KEY"):
            item = (f"PRIMARY KEY (`id`,`{PARTITION_COLUMN}`) "
                    "/*T![clustered_index] CLUSTERED */")
        elif item.startswith("UNIQUE KEY") and re.search(r"\(`request_id`\)", item):
            item = f"UNIQUE KEY `{UNIQUE_NAME}` (`request_id`,`{PARTITION_COLUMN}`)"
            seen_unique = True
        elif item.startswith("CONSTRAINT") and "FOREIGN KEY" in item:
            continue
        columns.append(item)
    if not (seen_id and seen_unique):
        raise ValueError("the table has no AUTO_INCREMENT id or no unique request_id")
    tail = re.sub(r"(?i)\s*/\*T!\[auto_id_cache\][^*]*\*/", "", tail)
    tail = re.sub(r"(?i)\s+AUTO_INCREMENT=\d+", "", tail)
    tail = re.sub(r"(?i)\s+AUTO_RANDOM_BASE=\d+", "", tail)
    inner = ",\n  ".join(columns)
    return f"CREATE TABLE `{new_table}` (\n  {inner}\n{tail}\n{partition_clause(months)}"


def tidb_claims_statements(*, show_create: str, table: str) -> list[str]:
    """TiDB: the claims table's request_id primary key spreads its inserts (ids are random)
    when it is the clustered key; a NONCLUSTERED one keeps rows by a hidden sequential row id,
    which SHARD_ROW_ID_BITS scatters over 2^4 ranges."""
    if "NONCLUSTERED" in show_create.upper():
        return [f"ALTER TABLE `{table}` SHARD_ROW_ID_BITS = 4"]
    return []


def tidb_swap_statements(*, table: str, new_table: str, old_table: str) -> list[str]:
    """One atomic RENAME: writers see the partitioned table from the next statement on."""
    return [f"RENAME TABLE `{table}` TO `{old_table}`, `{new_table}` TO `{table}`"]


def reorganize_statement(*, table: str, months: list[date]) -> str:
    """Split `months` out of pmax (rows already in pmax move to their month)."""
    return (f"ALTER TABLE `{table}` REORGANIZE PARTITION {CATCH_ALL} INTO "
            f"({partition_definitions(months)})")


def split_first_statement(*, table: str, first: date, months: list[date]) -> str:
    """Split `months` (all before `first`) out of the first partition, `p<first>`: it holds
    every row before its upper bound, so older rows (imported, or loaded before the table was
    partitioned from an empty one) move to their months."""
    return (f"ALTER TABLE `{table}` REORGANIZE PARTITION {partition_name(first)} INTO "
            f"({partition_definitions([*months, first], catch_all=False)})")


def drop_partition_statement(*, table: str, month: date) -> str:
    return f"ALTER TABLE `{table}` DROP PARTITION {partition_name(month)}"


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    month: date | None  # None: pmax
    rows_estimate: int  # information_schema's TABLE_ROWS: an estimate on InnoDB


def _table() -> str:
    from usage.models import UsageRecord

    return UsageRecord._meta.db_table


def _claims_table() -> str:
    from usage.models import LedgerRequest

    return LedgerRequest._meta.db_table


def _connection(using: str | None):
    from usage.models import UsageRecord

    return connections[using or router.db_for_write(UsageRecord)]


def flavour_of(connection) -> str | None:
    """The MySQL-family flavour of `connection`'s server, None for any other backend."""
    if connection.vendor != "mysql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        return server_flavour(cursor.fetchone()[0])


def ledger_partitions(*, using: str | None = None) -> list[Partition]:
    """The ledger's partitions in order; empty when the table is not partitioned (SQLite,
    PostgreSQL, or a MySQL table the migration has not partitioned)."""
    connection = _connection(using)
    if connection.vendor != "mysql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT PARTITION_NAME, TABLE_ROWS FROM information_schema.PARTITIONS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND PARTITION_NAME IS NOT NULL "
            "ORDER BY PARTITION_ORDINAL_POSITION", [_table()])
        return [Partition(name=name, month=partition_month(name), rows_estimate=int(rows or 0))
                for name, rows in cursor.fetchall()]


def _foreign_keys(cursor, table: str) -> list[str]:
    cursor.execute(
        "SELECT CONSTRAINT_NAME FROM information_schema.TABLE_CONSTRAINTS WHERE "
        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CONSTRAINT_TYPE = 'FOREIGN KEY' "
        "ORDER BY CONSTRAINT_NAME", [table])
    return [row[0] for row in cursor.fetchall()]


def _request_id_unique_index(cursor, table: str) -> str | None:
    cursor.execute(
        "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %s AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' "
        "GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND MAX(COLUMN_NAME) = 'request_id'", [table])
    row = cursor.fetchone()
    return row[0] if row else None


def _months_to_create(cursor, table: str, now: datetime) -> list[date]:
    cursor.execute(f"SELECT MIN(`{PARTITION_COLUMN}`) FROM `{table}`")
    earliest = cursor.fetchone()[0]
    current = month_start(now)
    return month_range(month_start(earliest) if earliest else current,
                       add_months(current, AHEAD_MONTHS))


def ledger_partition_apply(*, connection, now: datetime | None = None) -> list[str]:
    """Partition the ledger table of `connection` by month (the migration's forward step).
    Nothing happens on a backend other than MySQL/MariaDB/TiDB, or when the table is already
    partitioned. Returns the statements run."""
    flavour = flavour_of(connection)
    if flavour is None or ledger_partitions(using=connection.alias):
        return []
    now = now or datetime.now(dt_timezone.utc)
    table = _table()
    with connection.cursor() as cursor:
        claims_backfill(cursor, table=table)
        months = _months_to_create(cursor, table, now)
        if flavour == "tidb":
            statements = ledger_rebuild(cursor, table=table, months=months, now=now,
                                        session=TIDB_SESSION)
            cursor.execute(f"SHOW CREATE TABLE `{_claims_table()}`")
            for sql in tidb_claims_statements(show_create=cursor.fetchone()[1],
                                              table=_claims_table()):
                cursor.execute(sql)
                statements.append(sql)
        else:
            statements = mysql_partition_statements(
                table=table, foreign_keys=_foreign_keys(cursor, table),
                unique_index=_request_id_unique_index(cursor, table), months=months)
            for sql in statements:
                cursor.execute(sql)
        # Rows that processes still running the previous code wrote meanwhile.
        claims_backfill(cursor, table=table, since=now - CATCH_UP)
    return statements


def claims_backfill(cursor, *, table: str, since: datetime | None = None) -> None:
    """Claim (usage.models.LedgerRequest) the request ids of the ledger's rows, all of them in
    id chunks or those created from `since`; ids already claimed are skipped."""
    claims = _claims_table()
    if since is not None:
        cursor.execute(f"INSERT IGNORE INTO `{claims}` (request_id, created_at) "
                       f"SELECT request_id, created_at FROM `{table}` WHERE created_at >= %s",
                       [since.replace(tzinfo=None)])
        return
    for low, high in _id_chunks(cursor, table=table):
        cursor.execute(f"INSERT IGNORE INTO `{claims}` (request_id, created_at) "
                       f"SELECT request_id, created_at FROM `{table}` WHERE id > %s AND id <= %s",
                       [low, high])


def _id_chunks(cursor, *, table: str):
    """(after, up to) id bounds covering `table`'s rows, COPY_CHUNK rows each, in id order."""
    last_id = -1
    while True:
        cursor.execute(f"SELECT MAX(id) FROM (SELECT id FROM `{table}` WHERE id > %s "
                       f"ORDER BY id LIMIT {COPY_CHUNK}) chunk", [last_id])
        upper = cursor.fetchone()[0]
        if upper is None:
            return
        yield last_id, upper
        last_id = upper


# Copied rows keep their ids: TiDB refuses explicit values for an AUTO_RANDOM column unless
# the session allows them.
TIDB_SESSION = ("SET @@session.allow_auto_random_explicit_insert = 1",)


def ledger_rebuild(cursor, *, table: str, months: list[date], now: datetime,
                   session: tuple[str, ...] = ()) -> list[str]:
    """Rebuild the ledger as the partitioned table of tidb_create_statement: create it beside
    the old one, copy the rows in id chunks, swap the two with one RENAME, copy the rows
    written meanwhile (INSERT IGNORE of those created within CATCH_UP), drop the old table.
    The generated DDL keeps TiDB's attributes in TiDB's executable comments, so the same
    statements run (and are tested) on MariaDB, where they are plain comments. Returns the
    statements run (copies summarised)."""
    new_table, old_table = f"{table}__partitioned", f"{table}__unpartitioned"
    cursor.execute(f"SHOW CREATE TABLE `{table}`")
    create = tidb_create_statement(show_create=cursor.fetchone()[1], new_table=new_table,
                                   months=months)
    run = [f"DROP TABLE IF EXISTS `{new_table}`", create, *session]
    for sql in run:
        cursor.execute(sql)
    for low, high in _id_chunks(cursor, table=table):
        cursor.execute(f"INSERT IGNORE INTO `{new_table}` SELECT * FROM `{table}` "
                       "WHERE id > %s AND id <= %s", [low, high])
    swap = tidb_swap_statements(table=table, new_table=new_table, old_table=old_table)
    for sql in swap:
        cursor.execute(sql)
    since = (now - CATCH_UP).replace(tzinfo=None)
    cursor.execute(f"INSERT IGNORE INTO `{table}` SELECT * FROM `{old_table}` "
                   f"WHERE `{PARTITION_COLUMN}` >= %s", [since])
    cursor.execute(f"DROP TABLE `{old_table}`")
    return [*run, "INSERT IGNORE ... (copy in id chunks)", *swap, "INSERT IGNORE ... (catch-up)",
            f"DROP TABLE `{old_table}`"]


def ledger_partition_revert(*, connection) -> list[str]:
    """The migration's backward step on MySQL/MariaDB: one unpartitioned table with a unique
    request_id and an `id` primary key again (the foreign keys are not restored: rows of
    deleted keys may exist by then; Django's PROTECT still holds). Refused on TiDB (the
    AUTO_RANDOM ids would not fit back into a clustered AUTO_INCREMENT key)."""
    flavour = flavour_of(connection)
    if flavour is None or not ledger_partitions(using=connection.alias):
        return []
    if flavour == "tidb":
        raise RuntimeError("un-partitioning the ledger on TiDB is not supported")
    table = _table()
    statements = [f"ALTER TABLE `{table}` REMOVE PARTITIONING",
                  f"ALTER TABLE `{table}` DROP PRIMARY KEY, ADD PRIMARY KEY (`id`), "
                  f"DROP INDEX `{UNIQUE_NAME}`, ADD UNIQUE KEY `request_id` (`request_id`)"]
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)
    return statements


def months_missing(*, partitions: list[Partition], now: datetime,
                   ahead: int = AHEAD_MONTHS) -> list[date]:
    """The months to split out of pmax so that every month up to `ahead` after `now`'s has its
    partition: those after the last monthly partition (a gap is never created in the middle:
    RANGE partitions only split the last one)."""
    months = [p.month for p in partitions if p.month is not None]
    if not months or partitions[-1].name != CATCH_ALL:
        return []
    target = add_months(month_start(now), ahead)
    return month_range(add_months(max(months), 1), target) if max(months) < target else []


def ledger_partitions_ensure(*, ahead: int = AHEAD_MONTHS, now: datetime | None = None,
                             using: str | None = None) -> list[str]:
    """Split the months up to `ahead` after the current one out of pmax (rows that landed in
    pmax move to their month). Idempotent; a no-op where the ledger is not partitioned.
    Returns the names of the partitions added."""
    connection = _connection(using)
    partitions = ledger_partitions(using=connection.alias)
    months = months_missing(partitions=partitions, now=now or datetime.now(dt_timezone.utc),
                            ahead=ahead)
    if not months:
        return []
    with connection.cursor() as cursor:
        cursor.execute(reorganize_statement(table=_table(), months=months))
    added = [partition_name(m) for m in months]
    logger.info("ledger partitions added: %s", ", ".join(added))
    return added


def ledger_partitions_extend_back(*, since: date, using: str | None = None) -> list[str]:
    """Give each month from `since` up to the first partition's its own partition (rows move
    out of the first one). Idempotent; a no-op where the ledger is not partitioned. Returns
    the names of the partitions added."""
    connection = _connection(using)
    partitions = ledger_partitions(using=connection.alias)
    if not partitions or partitions[0].month is None or month_start(since) >= partitions[0].month:
        return []
    months = month_range(month_start(since), add_months(partitions[0].month, -1))
    with connection.cursor() as cursor:
        cursor.execute(split_first_statement(table=_table(), first=partitions[0].month,
                                             months=months))
    return [partition_name(m) for m in months]


def ledger_claims_purge(*, now: datetime | None = None, using: str | None = None) -> int:
    """Delete the request-id claims (usage.models.LedgerRequest) older than CLAIM_WINDOW, in
    chunks; returns how many. Every writer of a request's row carries its admission's
    created_at, and retries, spool replays and the reaper come within hours, so an old request
    is still guarded by the ledger's own (request_id, created_at) key; keeping only a window of
    claims keeps the table's random primary key in memory whatever the ledger's size (the
    ledger bench: 3x fewer rows/s once 10M claims no longer fit the buffer pool)."""
    from usage.models import LedgerRequest

    cutoff = (now or datetime.now(dt_timezone.utc)) - CLAIM_WINDOW
    deleted = 0
    while True:
        ids = list(LedgerRequest.objects.using(using or "default")
                   .filter(created_at__lt=cutoff).values_list("pk", flat=True)[:COPY_CHUNK])
        if not ids:
            return deleted
        deleted += LedgerRequest.objects.using(using or "default").filter(pk__in=ids).delete()[0]


def ledger_partition_drop(*, month: date, using: str | None = None) -> None:
    """DROP PARTITION of one month (usage.archive, once the month is exported and verified)."""
    with _connection(using).cursor() as cursor:
        cursor.execute(drop_partition_statement(table=_table(), month=month))


def ledger_partition_count(*, month: date, using: str | None = None) -> int | None:
    """The exact number of rows in the month's partition; None when it has none."""
    if partition_name(month) not in {p.name for p in ledger_partitions(using=using)}:
        return None
    with _connection(using).cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM `{_table()}` PARTITION ({partition_name(month)})")
        return cursor.fetchone()[0]
