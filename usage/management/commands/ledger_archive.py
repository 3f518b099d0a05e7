from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from usage.archive import ArchiveCorrupt, ArchiveRefused, ledger_archive, parse_month


class Command(BaseCommand):
    help = ("Export each whole month of the ledger before --before to a gzip'd JSON-lines file "
            "(one per month, listed with its row count and SHA-256 in manifest.json), verify "
            "the file, then drop the month from the ledger (DROP PARTITION on MySQL/MariaDB/"
            "TiDB, a chunked delete elsewhere). Budget counters and rollups are kept, so "
            "reports of archived months do not change. Safe to re-run.")

    def add_arguments(self, parser):
        parser.add_argument("--before", required=True,
                            help="YYYY-MM: archive the months before this one")
        parser.add_argument("--output-dir", default=str(settings.VAR_DIR / "ledger-archive"),
                            help="where the files and manifest.json go "
                                 "(default var/ledger-archive)")
        parser.add_argument("--dry-run", action="store_true",
                            help="list the months and rows that would be archived; write nothing")

    def handle(self, *args, before, output_dir, dry_run, **options):
        try:
            month = parse_month(before)
        except ValueError as exc:
            raise CommandError(f"--before: {exc}") from None
        try:
            results = ledger_archive(before=month, output_dir=Path(output_dir), dry_run=dry_run)
        except ArchiveRefused as exc:
            raise CommandError(str(exc)) from None
        except ArchiveCorrupt as exc:
            raise CommandError(
                f"verification failed, nothing dropped for that month: {exc}") from None
        if not results:
            self.stdout.write("nothing to archive")
        for r in results:
            label = f"{r.month:%Y-%m}:"
            if dry_run:
                self.stdout.write(f"{label} {r.rows} row(s) would be archived" if r.rows
                                  else f"{label} {r.skipped}")
            elif r.rows:
                files = ", ".join(Path(f).name for f in r.files)
                self.stdout.write(f"{label} {r.rows} row(s) exported to {files}; "
                                  f"{r.dropped} dropped ({r.method})")
            elif r.dropped:
                files = ", ".join(Path(f).name for f in r.files)
                self.stdout.write(f"{label} {r.dropped} row(s) dropped ({r.method}), "
                                  f"exported earlier to {files}")
            else:
                self.stdout.write(f"{label} {r.skipped}")
