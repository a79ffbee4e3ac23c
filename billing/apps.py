from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register billing's Celery tasks in every process (web, worker, commands): billing.enqueue
        # queues them by their registered name. Importing billing.tasks pulls in the services, so it
        # happens here, once the models are loaded.
        from . import tasks  # noqa: F401, PLC0415
