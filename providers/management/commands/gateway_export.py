from django.core.management.base import BaseCommand

from providers.services import config_export


class Command(BaseCommand):
    help = "Print the routing config as YAML; secrets appear as ${ENV} placeholders."

    def handle(self, *args, **options):
        self.stdout.write(config_export(), ending="")
