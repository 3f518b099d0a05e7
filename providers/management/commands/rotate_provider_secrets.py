from django.core.management.base import BaseCommand

from providers.services import provider_secrets_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored provider secrets under the first GATEWAY_ENCRYPTION_KEYS key."

    def handle(self, *args, **options):
        self.stdout.write(f"re-encrypted {provider_secrets_rotate()} provider secret(s)")
