"""Budgets >= 0 and alert thresholds 1..100 % as database checks on keys and teams.

Rows stored before the checks are repaired first, each repair recorded in the audit log (actor
"migration providers.0006"), with values that keep what the gateway did with them:
- a negative budget becomes 0: both refuse every request that costs anything;
- an alert threshold of 0 becomes unset: 0 never alerted (the sender skips a falsy threshold);
- a threshold above 100 becomes unset: a hard budget stops spend at 100 %, so it never fired.
Prices get no check: price rows are never rewritten, so a negative one stays as it was billed
(validators refuse new ones, and usage.budgets.usd_to_units counts a negative cost as 0).
Webhook URLs cannot be checked in SQL: the validator refuses new ones and usage.alerts refuses
to POST to a stored one that fails the check.
"""

import django.core.validators
import providers.validation
from decimal import Decimal
from django.db import migrations, models


ACTOR = "migration providers.0006"


def budgets_repair(apps, schema_editor):
    AuditLog = apps.get_model("providers", "AuditLog")
    for model_name, object_type in (("Team", "team"), ("ApiKey", "api_key")):
        model = apps.get_model("providers", model_name)
        bad = model.objects.filter(models.Q(budget_usd__lt=0) | models.Q(budget_alert_pct__lt=1)
                                   | models.Q(budget_alert_pct__gt=100))
        for row in bad:
            changes = {}
            if row.budget_usd is not None and row.budget_usd < 0:
                changes["budget_usd"] = [str(row.budget_usd), "0"]
                row.budget_usd = Decimal("0")
            if row.budget_alert_pct is not None and not 1 <= row.budget_alert_pct <= 100:
                changes["budget_alert_pct"] = [row.budget_alert_pct, None]
                row.budget_alert_pct = None
            row.save(update_fields=list(changes))
            AuditLog.objects.create(actor=ACTOR, action="change", object_type=object_type,
                                    object_id=str(row.pk), object_repr=row.name[:300],
                                    changes=changes)


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0005_price_rates_per_token_class'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apikey',
            name='budget_alert_pct',
            field=models.PositiveSmallIntegerField(blank=True, null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100)]),
        ),
        migrations.AlterField(
            model_name='team',
            name='alert_webhook_url',
            field=models.URLField(blank=True, help_text='POSTed a JSON alert when a budget threshold is crossed.', max_length=500, validators=[providers.validation.webhook_url_validate]),
        ),
        migrations.AlterField(
            model_name='team',
            name='budget_alert_pct',
            field=models.PositiveSmallIntegerField(blank=True, help_text='Send an alert when this % of the budget is spent (1-100).', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100)]),
        ),
        migrations.AlterField(
            model_name='team',
            name='budget_usd',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.RunPython(budgets_repair, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name='apikey',
            constraint=models.CheckConstraint(condition=models.Q(('budget_usd__isnull', True), ('budget_usd__gte', 0), _connector='OR'), name='apikey_budget_not_negative', violation_error_message='A budget cannot be negative.'),
        ),
        migrations.AddConstraint(
            model_name='apikey',
            constraint=models.CheckConstraint(condition=models.Q(('budget_alert_pct__isnull', True), models.Q(('budget_alert_pct__gte', 1), ('budget_alert_pct__lte', 100)), _connector='OR'), name='apikey_alert_pct_1_to_100', violation_error_message='An alert threshold is between 1 and 100 %.'),
        ),
        migrations.AddConstraint(
            model_name='team',
            constraint=models.CheckConstraint(condition=models.Q(('budget_usd__isnull', True), ('budget_usd__gte', 0), _connector='OR'), name='team_budget_not_negative', violation_error_message='A budget cannot be negative.'),
        ),
        migrations.AddConstraint(
            model_name='team',
            constraint=models.CheckConstraint(condition=models.Q(('budget_alert_pct__isnull', True), models.Q(('budget_alert_pct__gte', 1), ('budget_alert_pct__lte', 100)), _connector='OR'), name='team_alert_pct_1_to_100', violation_error_message='An alert threshold is between 1 and 100 %.'),
        ),
    ]
