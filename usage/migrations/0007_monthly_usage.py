"""The monthly rollup (MonthlyUsage), filled from the daily rollup rows already there, and the
daily rollup's (provider, day) and (model, day) indexes (usage.models says what they serve)."""

import django.db.models.deletion
from django.db import migrations, models


def months_fill(apps, schema_editor):
    from usage.rollups import monthly_rollup

    DailyUsage = apps.get_model("usage", "DailyUsage")
    months = {day.replace(day=1) for day in
              DailyUsage.objects.values_list("day", flat=True).distinct().order_by()}
    for month in sorted(months):
        monthly_rollup(month=month, daily=DailyUsage,
                       monthly=apps.get_model("usage", "MonthlyUsage"))


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0011_key_change_feed'),
        ('usage', '0006_ledger_partitions'),
    ]

    operations = [
        migrations.CreateModel(
            name='MonthlyUsage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key_prefix', models.CharField(blank=True, max_length=16)),
                ('key_name', models.CharField(blank=True, max_length=100)),
                ('team_name', models.CharField(blank=True, max_length=64)),
                ('provider_name', models.CharField(max_length=64)),
                ('public_model', models.CharField(max_length=200)),
                ('requests', models.PositiveIntegerField(default=0)),
                ('errors', models.PositiveIntegerField(default=0)),
                ('input_tokens', models.BigIntegerField(default=0)),
                ('output_tokens', models.BigIntegerField(default=0)),
                ('cached_tokens', models.BigIntegerField(default=0)),
                ('cache_write_5m_tokens', models.BigIntegerField(default=0)),
                ('cache_write_1h_tokens', models.BigIntegerField(default=0)),
                ('reasoning_tokens', models.BigIntegerField(default=0)),
                ('audio_input_tokens', models.BigIntegerField(default=0)),
                ('audio_output_tokens', models.BigIntegerField(default=0)),
                ('image_input_tokens', models.BigIntegerField(default=0)),
                ('image_output_tokens', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=24)),
                ('month', models.DateField()),
            ],
        ),
        migrations.AddIndex(
            model_name='dailyusage',
            index=models.Index(fields=['provider_name', 'day'], name='usage_daily_provider_day'),
        ),
        migrations.AddIndex(
            model_name='dailyusage',
            index=models.Index(fields=['public_model', 'day'], name='usage_daily_model_day'),
        ),
        migrations.AddField(
            model_name='monthlyusage',
            name='api_key',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='providers.apikey'),
        ),
        migrations.AddField(
            model_name='monthlyusage',
            name='team',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='providers.team'),
        ),
        migrations.AddIndex(
            model_name='monthlyusage',
            index=models.Index(fields=['month'], name='usage_month_month_c9a93a_idx'),
        ),
        migrations.AddConstraint(
            model_name='monthlyusage',
            constraint=models.UniqueConstraint(fields=('month', 'api_key', 'key_prefix', 'key_name', 'team', 'team_name', 'provider_name', 'public_model'), name='uniq_monthly_usage'),
        ),
        migrations.RunPython(months_fill, migrations.RunPython.noop),
    ]
