"""Monthly range partitions of the ledger on MySQL, MariaDB and TiDB; nothing elsewhere (SQLite).

MySQL-family servers require every unique key of a partitioned table, the primary key
included, to contain the partitioning column. The choice (docs/ledger.md, "A ledger that lasts
for years"): partition by RANGE COLUMNS(created_at), primary key (id, created_at), the request
id's index (request_id, created_at), and the request id kept unique by the database in a small
unpartitioned table, LedgerRequest (request_id primary key), that usage.services fills in the
rows' own transaction and usage.archive empties with them. A second row of a request (a retried
batch, a spool replay, the reaper, even one carrying another created_at) fails on that key with
the IntegrityError the idempotent writers already handle. Weighed and rejected: relying on
(request_id, created_at) alone (a replay with another created_at would be a second row; the
fault suite replays intents so), and a month derived from the request id (ids are random
uuid4 today, and old rows would not fit). The cost: one more multi-row INSERT per ledger batch,
into a table kept to the last 40 days of requests (usage.partitions.ledger_claims_purge).

Partitioned InnoDB tables hold no foreign keys: the key, team and price constraints are
dropped on these backends; Django's on_delete=PROTECT (checked by Django) still refuses to
delete a key, team or price that billed a row. Django's migration state keeps describing the
ledger table as before (unique request_id, id primary key, foreign keys): a later migration
that alters those columns on MySQL must use RunSQL. Existing rows' request ids are claimed
before the table is partitioned, and those written meanwhile by processes still running the
previous code after it.

On TiDB the id also becomes AUTO_RANDOM (no write hotspot); TiDB cannot change a clustered
primary key in place, so there the table is rebuilt and swapped (usage.partitions). On a large
existing table this copies every row: run it in a maintenance window.
"""
from django.db import migrations, models


def partition(apps, schema_editor):
    from usage.partitions import ledger_partition_apply

    ledger_partition_apply(connection=schema_editor.connection)


def unpartition(apps, schema_editor):
    from usage.partitions import ledger_partition_revert

    ledger_partition_revert(connection=schema_editor.connection)


class Migration(migrations.Migration):
    # ALTER TABLE commits implicitly on MySQL; the TiDB rebuild is a sequence of statements.
    atomic = False

    dependencies = [
        ('usage', '0005_operations_rollup'),
    ]

    operations = [
        migrations.CreateModel(
            name='LedgerArchive',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('month', models.DateField()),
                ('part', models.PositiveSmallIntegerField(default=1)),
                ('path', models.CharField(max_length=1000)),
                ('rows', models.PositiveBigIntegerField()),
                ('sha256', models.CharField(max_length=64)),
                ('first_created_at', models.DateTimeField(null=True)),
                ('last_created_at', models.DateTimeField(null=True)),
                ('dropped', models.BooleanField(default=False)),
                ('archived_at', models.DateTimeField()),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('month', 'part'), name='uniq_ledger_archive_part')],
            },
        ),
        migrations.CreateModel(
            name='LedgerRequest',
            fields=[
                ('request_id', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField(db_index=True)),
            ],
        ),
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
