from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def config_sections(self):
        """The routing file's `tasks:` section is this app's (providers.config_file)."""
        from providers.config_file import ConfigSection
        from tasks.config_file import TaskSpec
        from tasks.selectors import tasks_export
        from tasks.services import tasks_apply

        return (ConfigSection(name="tasks", item=TaskSpec, apply=tasks_apply,
                              export=tasks_export, unique="slug"),)
