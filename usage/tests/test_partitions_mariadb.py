"""Migration usage 0006 on a private mariadbd (its own datadir and port, tests/faults/harness.py)
with rows already in the ledger, as an operator runs it (`manage.py migrate`): partitions from
the oldest row's month, every row in its month's partition, the foreign keys gone; reverted
and applied again without losing a row; and the TiDB rebuild's statements (AUTO_RANDOM and
CLUSTERED in TiDB's executable comments, plain comments here) copying every row, ids kept,
into a partitioned table that refuses a second row of a request. Skipped without mariadbd."""
from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pytest

from tests.faults.harness import MariaDB, manage, operator_env
from usage.partitions import AHEAD_MONTHS, add_months, month_start, partition_name

NOW = datetime.now(timezone.utc)
CURRENT = month_start(NOW)
MONTHS = [add_months(CURRENT, -4), add_months(CURRENT, -3), CURRENT]


@pytest.fixture(scope="module")
def server():
    for tool in ("mariadbd", "mariadb-install-db"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    pytest.importorskip("MySQLdb", reason="the MySQL driver (requirements-prod.lock)")
    db = MariaDB()
    try:
        db.install()
        db.start()
        yield db
    finally:
        db.destroy()


def _database(server: MariaDB, name: str) -> dict[str, str]:
    """A database migrated up to usage 0005 holding two rows in each of MONTHS; its env."""
    server.query(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                 database=None)
    env = operator_env(server.url.rsplit("/", 1)[0] + f"/{name}")
    manage("migrate", "usage", "0005", "--noinput", env=env, timeout=300)
    columns = [row[0] for row in server.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND "
        "TABLE_NAME = 'usage_usagerecord' AND COLUMN_NAME NOT IN ('id', 'request_id', "
        "'created_at') AND IS_NULLABLE = 'NO'", (name,), database=None)]
    for month in MONTHS:
        for day in (1, 20):
            values = {c: "" for c in columns}
            values.update({c: 0 for c in columns if c.endswith(("_tokens", "_ms", "_status"))
                           or c in ("stream", "cost_usd")})
            values.update(request_id=f"req-{month:%Y%m}-{day}",
                          created_at=datetime(month.year, month.month, day, 8))
            server.query(f"INSERT INTO usage_usagerecord ({', '.join(values)}) VALUES "
                         f"({', '.join(['%s'] * len(values))})", tuple(values.values()),
                         database=name)
    return env


def _ddl(server: MariaDB, name: str) -> str:
    return server.query("SHOW CREATE TABLE usage_usagerecord", database=name)[0][1]


def _partition_rows(server: MariaDB, name: str) -> dict[str, int]:
    return dict(server.query(
        "SELECT PARTITION_NAME, TABLE_ROWS FROM information_schema.PARTITIONS WHERE "
        "TABLE_SCHEMA = %s AND TABLE_NAME = 'usage_usagerecord' ORDER BY "
        "PARTITION_ORDINAL_POSITION", (name,), database=None))


def _in_partition(server: MariaDB, name: str, partition: str) -> list[str]:
    return [r[0] for r in server.query(
        f"SELECT request_id FROM usage_usagerecord PARTITION ({partition}) ORDER BY request_id",
        database=name)]


def test_existing_rows_are_partitioned_by_month_and_survive_a_revert(server):
    env = _database(server, "gw_part")
    ids = sorted(r[0] for r in server.query("SELECT id FROM usage_usagerecord", database="gw_part"))

    manage("migrate", "usage", "0006", "--noinput", env=env)

    expected = [partition_name(add_months(MONTHS[0], i))
                for i in range(4 + AHEAD_MONTHS + 1)] + ["pmax"]
    assert list(_partition_rows(server, "gw_part")) == expected
    for month in MONTHS:
        assert _in_partition(server, "gw_part", partition_name(month)) == [
            f"req-{month:%Y%m}-1", f"req-{month:%Y%m}-20"]
    ddl = _ddl(server, "gw_part")
    assert "PRIMARY KEY (`id`,`created_at`)" in ddl and "FOREIGN KEY" not in ddl
    assert sorted(r[0] for r in server.query("SELECT request_id FROM usage_ledgerrequest",
                                             database="gw_part")) == sorted(
        f"req-{m:%Y%m}-{d}" for m in MONTHS for d in (1, 20))
    with pytest.raises(Exception, match="1062"):  # Duplicate entry: the database refuses it
        server.query("INSERT INTO usage_usagerecord SELECT * FROM usage_usagerecord LIMIT 1",
                     database="gw_part")

    manage("migrate", "usage", "0005", "--noinput", env=env)
    ddl = _ddl(server, "gw_part")
    assert "PARTITION" not in ddl and "UNIQUE KEY `request_id` (`request_id`)" in ddl
    manage("migrate", "usage", "0006", "--noinput", env=env)
    assert sorted(r[0] for r in server.query("SELECT id FROM usage_usagerecord",
                                             database="gw_part")) == ids
    assert "PARTITION BY RANGE" in _ddl(server, "gw_part")


REBUILD = """
from datetime import datetime, timezone
from django.db import connection
from usage.partitions import ledger_rebuild, month_range, month_start, add_months
now = datetime.now(timezone.utc)
with connection.cursor() as cursor:
    cursor.execute("SELECT MIN(created_at) FROM usage_usagerecord")
    first = month_start(cursor.fetchone()[0])
    ledger_rebuild(cursor, table="usage_usagerecord", now=now,
                   months=month_range(first, add_months(month_start(now), 3)))
"""


def test_the_tidb_rebuild_copies_every_row_into_a_partitioned_table(server):
    env = _database(server, "gw_rebuild")
    before = server.query("SELECT * FROM usage_usagerecord ORDER BY id", database="gw_rebuild")

    manage("shell", "-c", REBUILD, env=env)

    ddl = _ddl(server, "gw_rebuild")
    # TiDB's AUTO_RANDOM and CLUSTERED are comments to MariaDB: the id is a plain bigint.
    assert "`id` bigint(20) NOT NULL," in ddl and "AUTO_INCREMENT" not in ddl
    assert "PRIMARY KEY (`id`,`created_at`)" in ddl
    assert "PARTITION BY RANGE" in ddl and "FOREIGN KEY" not in ddl
    assert server.query("SELECT * FROM usage_usagerecord ORDER BY id", database="gw_rebuild") \
        == before
    assert _in_partition(server, "gw_rebuild", partition_name(MONTHS[1])) == [
        f"req-{MONTHS[1]:%Y%m}-1", f"req-{MONTHS[1]:%Y%m}-20"]
    tables = {r[0] for r in server.query("SHOW TABLES LIKE 'usage_usagerecord%%'",
                                         database="gw_rebuild")}
    assert tables == {"usage_usagerecord"}
    with pytest.raises(Exception, match="1062"):
        server.query("INSERT INTO usage_usagerecord SELECT id + 1000, request_id, "
                     + ", ".join(f"`{c}`" for c in _columns(server)[2:])
                     + " FROM usage_usagerecord LIMIT 1", database="gw_rebuild")


def _columns(server: MariaDB) -> list[str]:
    return [r[0] for r in server.query(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'gw_rebuild' "
        "AND TABLE_NAME = 'usage_usagerecord' ORDER BY ORDINAL_POSITION", database=None)]
