# Rates per token class and a long-context tier on Price (usage.pricing).

import django.core.validators
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0004_provider_kind_from_dialects'),
    ]

    operations = [
        migrations.AddField(
            model_name='price',
            name='audio_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Audio input. Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='audio_output_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Audio output. Empty: the output rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='cache_write_1h_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Cache writes kept 1 hour (Anthropic: 2 x input). Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='cache_write_5m_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Cache writes kept 5 minutes (Anthropic: 1.25 x input). Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='image_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Image input. Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='image_output_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Image output. Empty: the output rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_cache_write_1h_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Long context: 1-hour cache writes. Empty: the long-context input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_cache_write_5m_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Long context: 5-minute cache writes. Empty: the long-context input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_cached_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Long context: cache reads. Empty: the long-context input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Long context: input. Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_output_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Long context: output and reasoning. Empty: the output rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AddField(
            model_name='price',
            name='long_context_threshold',
            field=models.PositiveIntegerField(blank=True, help_text='Input tokens above which the whole request is billed at the long-context rates. Empty: one tier.', null=True),
        ),
        migrations.AddField(
            model_name='price',
            name='reasoning_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Reasoning output. Empty: the output rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AlterField(
            model_name='price',
            name='cached_input_per_mtok',
            field=models.DecimalField(blank=True, decimal_places=6, help_text='Cache reads. Empty: the input rate.', max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AlterField(
            model_name='price',
            name='input_per_mtok',
            field=models.DecimalField(decimal_places=6, help_text='Uncached input.', max_digits=14, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
        migrations.AlterField(
            model_name='price',
            name='output_per_mtok',
            field=models.DecimalField(decimal_places=6, help_text='Output, reasoning included.', max_digits=14, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
    ]
