"""Keys: an expiry and a rotation grace (the previous secret's digest and when it stops); human
labels and help texts on provider, key and team fields (no schema change for those)."""
import django.core.validators
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0007_provider_kind_length'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='expires_at',
            field=models.DateTimeField(blank=True, help_text='From this time on the key is refused (401). Empty: it never expires.', null=True, verbose_name='expires'),
        ),
        migrations.AddField(
            model_name='apikey',
            name='previous_key_expires_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='previous secret valid until'),
        ),
        migrations.AddField(
            model_name='apikey',
            name='previous_key_hash',
            field=models.CharField(blank=True, db_index=True, default='', max_length=64),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='budget_alert_pct',
            field=models.PositiveSmallIntegerField(blank=True, help_text='Send an alert when this % of the budget is spent (1-100).', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100)], verbose_name='budget alert (%)'),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='budget_usd',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='budget (USD)'),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='max_tokens_default',
            field=models.PositiveIntegerField(blank=True, help_text='Output cap for requests that send none (also what the budget reserves).', null=True, verbose_name='default max. tokens'),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='rpm_limit',
            field=models.PositiveIntegerField(blank=True, help_text='Empty: no limit.', null=True, verbose_name='requests per minute'),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='tpm_limit',
            field=models.PositiveIntegerField(blank=True, help_text='Empty: no limit.', null=True, verbose_name='tokens per minute'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='base_url',
            field=models.URLField(blank=True, max_length=500, verbose_name='base URL'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='breaker_cooldown_s',
            field=models.FloatField(default=30, help_text='Seconds an open circuit waits before one probe; doubles after a failed probe.', validators=[django.core.validators.MinValueValidator(0.1)], verbose_name='circuit breaker: cool-down (s)'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='breaker_failures',
            field=models.PositiveIntegerField(default=5, help_text="Consecutive failures that open a route's circuit.", validators=[django.core.validators.MinValueValidator(1)], verbose_name='circuit breaker: failures'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='extra_headers',
            field=models.JSONField(blank=True, default=dict, help_text='Headers sent with every upstream request, as JSON: {"OpenAI-Organization": "org-…"}. Values are secrets: masked in the audit log and exports.'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='max_inflight',
            field=models.PositiveIntegerField(default=512, help_text='Concurrent upstream requests; beyond it, the next deployment is tried.', verbose_name='max. requests in flight'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='timeout_s',
            field=models.FloatField(default=600, help_text="Seconds to wait for the upstream's answer.", validators=[django.core.validators.MinValueValidator(0.1)], verbose_name='timeout (s)'),
        ),
        migrations.AlterField(
            model_name='team',
            name='budget_alert_pct',
            field=models.PositiveSmallIntegerField(blank=True, help_text='Send an alert when this % of the budget is spent (1-100).', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100)], verbose_name='budget alert (%)'),
        ),
        migrations.AlterField(
            model_name='team',
            name='budget_usd',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='budget (USD)'),
        ),
    ]
