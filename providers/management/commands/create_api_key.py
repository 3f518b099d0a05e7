from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from providers.models import BudgetPeriod
from providers.services import api_key_create


def _budget(value: str) -> Decimal:
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"--budget-usd: {value!r} is not a decimal number") from None
    if not result.is_finite() or result < 0:
        raise CommandError("--budget-usd: must be a non-negative number")
    return result


class Command(BaseCommand):
    help = "Create a client API key; the secret is printed once, alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--team")
        parser.add_argument("--models", help="comma-separated public model names (default: all)")
        parser.add_argument("--budget-usd", type=_budget)
        parser.add_argument("--budget-period", choices=BudgetPeriod.values, default="month")
        parser.add_argument("--rpm", type=int)
        parser.add_argument("--tpm", type=int)
        parser.add_argument("--max-tokens-default", type=int)

    def handle(self, *args, name, team, models, budget_usd, budget_period, rpm, tpm,
               max_tokens_default, **options):
        for flag, value in (("--rpm", rpm), ("--tpm", tpm), ("--max-tokens-default", max_tokens_default)):
            if value is not None and value <= 0:
                raise CommandError(f"{flag}: must be a positive integer")
        model_list = [m.strip() for m in (models or "").split(",") if m.strip()]
        key, raw = api_key_create(name=name, team=team, models=model_list, budget_usd=budget_usd,
                                  budget_period=budget_period, rpm=rpm, tpm=tpm,
                                  max_tokens_default=max_tokens_default)
        self.stdout.write(f"Created key {key.name!r} (prefix {key.prefix}). Store it now; "
                          "it is not shown again:")
        self.stdout.write(raw)
