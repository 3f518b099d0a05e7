# Tokens per class, the key's and team's names as they were, tags and end user on the ledger
# and its rollup; keys, teams and prices with usage protected from deletion.

import django.db.models.deletion
from django.db import migrations, models


def names_backfill(apps, schema_editor):
    """Rows written before names were stored get the key's and team's names of today (the best
    there is); the rollup gets them from its ledger rows, its key's prefix included."""
    ApiKey = apps.get_model("providers", "ApiKey")
    Team = apps.get_model("providers", "Team")
    for model in (apps.get_model("usage", "UsageRecord"), apps.get_model("usage", "DailyUsage")):
        for key in ApiKey.objects.all().only("pk", "name", "prefix"):
            rows = model.objects.filter(api_key_id=key.pk, key_name="")
            if model.__name__ == "DailyUsage":
                rows.update(key_name=key.name[:100], key_prefix=key.prefix)
            else:
                rows.update(key_name=key.name[:100])
        for team in Team.objects.all().only("pk", "name"):
            model.objects.filter(team_id=team.pk, team_name="").update(team_name=team.name[:64])


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0005_price_rates_per_token_class'),
        ('usage', '0003_request_intent'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='dailyusage',
            name='uniq_daily_usage',
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='audio_input_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='audio_output_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='cache_write_1h_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='cache_write_5m_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='image_input_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='image_output_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='key_name',
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='key_prefix',
            field=models.CharField(blank=True, max_length=16),
        ),
        migrations.AddField(
            model_name='dailyusage',
            name='team_name',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='audio_input_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='audio_output_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='cache_write_1h_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='cache_write_5m_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='end_user',
            field=models.CharField(blank=True, max_length=256),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='image_input_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='image_output_tokens',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='key_name',
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='tags',
            field=models.CharField(blank=True, max_length=650),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='team_name',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AlterField(
            model_name='dailyusage',
            name='api_key',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='providers.apikey'),
        ),
        migrations.AlterField(
            model_name='dailyusage',
            name='team',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='providers.team'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='api_key',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='usage_records', to='providers.apikey'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='price',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='providers.price'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='team',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='usage_records', to='providers.team'),
        ),
        migrations.AddIndex(
            model_name='usagerecord',
            index=models.Index(fields=['end_user', 'created_at'], name='usage_usage_end_use_2c0995_idx'),
        ),
        migrations.AddConstraint(
            model_name='dailyusage',
            constraint=models.UniqueConstraint(fields=('day', 'api_key', 'key_prefix', 'key_name', 'team', 'team_name', 'provider_name', 'public_model'), name='uniq_daily_usage'),
        ),
        migrations.RunPython(names_backfill, migrations.RunPython.noop),
    ]
