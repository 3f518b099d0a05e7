"""Task moves to the tasks app. Its rows stay: the table (and its two access-list tables) is
renamed to the tasks app's names, and the model leaves chat's state only (tasks 0001 takes it
up, and moves its content type, so permissions and admin history follow)."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            # AlterModelTable renames the auto-created many-to-many tables too.
            database_operations=[migrations.AlterModelTable(name="task", table="tasks_task")],
            state_operations=[migrations.DeleteModel(name="Task")],
        ),
    ]
