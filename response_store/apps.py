from django.apps import AppConfig


class ResponseStoreConfig(AppConfig):
    name = "response_store"
    verbose_name = "Stored responses"
    default_auto_field = "django.db.models.BigAutoField"
