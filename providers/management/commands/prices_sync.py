from django.core.management.base import BaseCommand, CommandError

from providers.models import Provider
from providers.services import PriceSyncOutcome, prices_sync


class Command(BaseCommand):
    help = ("Add a price version from the offline catalog (genai-prices) for every upstream model "
            "an enabled route serves, where the catalog's price differs from the one in force. "
            "A price an admin entered (admin or routing file) is always kept.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true",
                            help="print what would be added; write nothing")
        parser.add_argument("--provider", metavar="P",
                            help="only the routes of provider P (its name)")

    def handle(self, *args, dry_run, provider, **options):
        scope = None
        if provider is not None:
            scope = Provider.objects.filter(name=provider).first()
            if scope is None:
                raise CommandError(f"unknown provider {provider!r}")
        items = prices_sync(provider=scope, dry_run=dry_run)
        for item in items:
            line = f"{item.provider}/{item.upstream_model}: {item.outcome}"
            if item.catalog is not None and item.outcome in (PriceSyncOutcome.ADDED,
                                                             PriceSyncOutcome.WOULD_ADD):
                line += (f" (catalog {item.catalog.catalog_provider}/{item.catalog.catalog_model}"
                         f", genai-prices {item.catalog.version}: {item.detail})")
            elif item.detail:
                line += f" ({item.detail})"
            self.stdout.write(line)
        counts = {outcome: sum(i.outcome == outcome for i in items) for outcome in PriceSyncOutcome}
        self.stdout.write(", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
                          or "no upstream models in use")
