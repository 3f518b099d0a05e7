from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from usage.partitions import (
    AHEAD_MONTHS, ledger_claims_purge, ledger_partitions, ledger_partitions_ensure,
    ledger_partitions_extend_back,
)


class Command(BaseCommand):
    help = ("Add the ledger's monthly partitions for the months ahead (split out of the pmax "
            "catch-all), delete the request-id claims older than their window (what the Celery "
            "beat task usage.ledger_partitions does daily) and list the partitions. Nothing to "
            "partition where the ledger is not partitioned (SQLite).")

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=AHEAD_MONTHS,
                            help=f"months after the current one to have (default {AHEAD_MONTHS})")
        parser.add_argument("--since", help="YYYY-MM: also give every month from this one to "
                                            "the first partition its own (after importing "
                                            "older rows)")

    def handle(self, *args, ahead, since, **options):
        added = []
        if since:
            try:
                month = datetime.strptime(since, "%Y-%m").date()
            except ValueError:
                raise CommandError(f"--since: {since!r} is not a month (YYYY-MM)") from None
            added += ledger_partitions_extend_back(since=month)
        added += ledger_partitions_ensure(ahead=ahead)
        purged = ledger_claims_purge()
        partitions = ledger_partitions()
        if not partitions:
            self.stdout.write("the ledger is not partitioned on this database")
            return
        self.stdout.write(f"added: {', '.join(added)}" if added else "added: none")
        self.stdout.write(f"request-id claims older than their window deleted: {purged}")
        for p in partitions:
            self.stdout.write(f"{p.name}\t~{p.rows_estimate} rows")
