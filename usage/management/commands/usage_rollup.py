from datetime import date

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from usage.rollups import rollup_days_due, usage_rollup


class Command(BaseCommand):
    help = "Roll the ledger up into daily aggregates (for cron when Celery beat is not running)."

    def add_arguments(self, parser):
        parser.add_argument("--day", help="ISO date (default: today, yesterday and any older day "
                                          "a late row landed in since its rollup, UTC)")

    def handle(self, *args, day, **options):
        try:
            days = ([date.fromisoformat(day)] if day
                    else rollup_days_due(today=timezone.now().date()))
        except ValueError:
            raise CommandError(f"--day: {day!r} is not an ISO date (YYYY-MM-DD)") from None
        for d in days:
            self.stdout.write(f"{d}: {usage_rollup(day=d)} group(s)")
