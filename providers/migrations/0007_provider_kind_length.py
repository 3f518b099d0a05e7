# The kind names of gateway.dialects outgrew 16 characters (azure_openai_responses is 22).
from django.db import migrations, models

import gateway.dialects


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0006_budget_and_alert_checks'),
    ]

    operations = [
        migrations.AlterField(
            model_name='provider',
            name='kind',
            field=models.CharField(choices=gateway.dialects.kind_choices, max_length=32),
        ),
    ]
