"""The key change feed (issue 18): API keys left the routing snapshot; a key change is a row
here (and a Redis message) that tells every serving process which cached digests to drop."""
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0010_route_capabilities'),
    ]

    operations = [
        migrations.CreateModel(
            name='KeyChange',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('digests', models.JSONField(blank=True, default=list)),
                ('team_id', models.BigIntegerField(blank=True, null=True)),
                ('at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
            ],
        ),
    ]
