"""The `finance` group: its staff members may read /reports/ and /api/usage/ (usage.permissions)."""
from django.db import migrations

FINANCE_GROUP = "finance"


def finance_group_create(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name=FINANCE_GROUP)


class Migration(migrations.Migration):

    dependencies = [
        ("usage", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    # Not removed on reverse: the group may have members the data migration did not create.
    operations = [migrations.RunPython(finance_group_create, migrations.RunPython.noop)]
