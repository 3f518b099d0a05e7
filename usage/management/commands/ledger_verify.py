from datetime import date, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from usage.verification import ledger_verify


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = ("Recompute every ledger row's cost from its price version and tokens, and compare "
            "each day's sums with the rollup, each month's rollup with its days' and each "
            "budget counter with the ledger. Lists the differences; exits 1 when there is any.")

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="start", help="first UTC day, ISO (default: 30 days ago)")
        parser.add_argument("--to", dest="end", help="last UTC day, ISO (default: today)")
        parser.add_argument("--limit", type=int, default=100,
                            help="differing rows to list (default 100; all are counted)")

    def handle(self, *args, start, end, limit, **options):
        today = timezone.now().date()
        end = _day(end) if end else today
        start = _day(start) if start else end - timedelta(days=29)
        if start > end:
            raise CommandError("--from must not be after --to")
        result = ledger_verify(start=start, end=end)
        for row in result.rows[:limit]:
            self.stdout.write(f"row {row.request_id} {row.created_at.isoformat()} price "
                              f"{row.price_id}: stored {row.stored}, recomputed {row.recomputed}")
        if len(result.rows) > limit:
            self.stdout.write(f"... and {len(result.rows) - limit} more rows")
        for day in result.days:
            changed = {k: (v, day.rollup[k]) for k, v in day.ledger.items() if day.rollup[k] != v}
            self.stdout.write(f"day {day.day}: ledger != rollup: " + ", ".join(
                f"{k} {a} != {b}" for k, (a, b) in changed.items()))
        for month in result.months:
            changed = {k: (v, month.monthly[k]) for k, v in month.daily.items()
                       if month.monthly[k] != v}
            self.stdout.write(f"month {month.month:%Y-%m}: daily rollups != monthly rollup: "
                              + ", ".join(f"{k} {a} != {b}" for k, (a, b) in changed.items()))
        for c in result.counters:
            self.stdout.write(f"counter {c.scope}:{c.scope_id} {c.period} from "
                              f"{c.period_start:%Y-%m-%d}: spent {c.spent}, ledger {c.ledger}")
        for day in result.days_not_rolled_up:
            self.stdout.write(f"note: {day} has ledger rows but no rollup yet (manage.py "
                              f"usage_rollup --day {day})")
        summary = (f"{start}..{end}: {result.rows_checked} rows, {result.days_checked} days, "
                   f"{result.months_checked} months, {result.counters_checked} budget counters "
                   f"checked; {result.differences} difference(s)")
        if result.differences:
            raise CommandError(summary)
        self.stdout.write(summary)
