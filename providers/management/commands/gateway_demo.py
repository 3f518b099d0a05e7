from django.core.management.base import BaseCommand

from providers.services import demo_config_load


class Command(BaseCommand):
    help = "On a database with no provider, load the offline demo config and print its logins."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000",
                            help="where the server will listen (printed with the admin login)")

    def handle(self, *args, **options):
        demo = demo_config_load()
        if demo is None:
            return
        self.stdout.write("Loaded the demo config: provider 'mock' serves the model 'demo'.")
        if demo.admin_password:
            self.stdout.write(f"Development admin login: {demo.admin_username} / {demo.admin_password}"
                              f"  ({options['base_url'].rstrip('/')}/admin/)")
        self.stdout.write(f"Demo API key: {demo.api_key}")
