import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from providers.config_file import ConfigError, config_parse
from providers.services import config_apply


class Command(BaseCommand):
    help = "Upsert providers, model routes, prices and tasks from a routing YAML file (CONTRACT §3)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="path to the YAML file, or - for standard input")
        parser.add_argument("--prune", action="store_true",
                            help="delete providers (and tasks, when the file has a tasks: section) "
                                 "that are not in the file")

    def handle(self, *args, file, prune, **options):
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from None
        try:
            result = config_apply(spec=config_parse(text), prune=prune)
        except ConfigError as exc:
            raise CommandError(f"{file}: {exc}") from None
        self.stdout.write(
            f"providers: {result.providers_created} created, {result.providers_updated} updated, "
            f"{result.providers_deleted} deleted; routes: {result.routes_written} written, "
            f"{result.routes_deleted} deleted; prices: {result.prices_added} added"
            + "".join(f"; {name}: {r.written} written, {r.deleted} deleted"
                      for name, r in result.sections.items()))
