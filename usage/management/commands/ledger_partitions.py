from django.core.management.base import BaseCommand

from usage.partitions import AHEAD_MONTHS, ledger_partitions, ledger_partitions_ensure


class Command(BaseCommand):
    help = ("Add the ledger's monthly partitions for the months ahead (split out of the pmax "
            "catch-all; what the Celery beat task usage.ledger_partitions does daily) and list "
            "the partitions. Nothing to do where the ledger is not partitioned (SQLite).")

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=AHEAD_MONTHS,
                            help=f"months after the current one to have (default {AHEAD_MONTHS})")

    def handle(self, *args, ahead, **options):
        added = ledger_partitions_ensure(ahead=ahead)
        partitions = ledger_partitions()
        if not partitions:
            self.stdout.write("the ledger is not partitioned on this database")
            return
        self.stdout.write(f"added: {', '.join(added)}" if added else "added: none")
        for p in partitions:
            self.stdout.write(f"{p.name}\t~{p.rows_estimate} rows")
