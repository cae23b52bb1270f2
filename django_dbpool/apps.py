from __future__ import annotations

from django.apps import AppConfig


class DbPoolConfig(AppConfig):
    name = "django_dbpool"
    verbose_name = "Database connection pool"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Wiring only: no I/O, no database. Importing the module registers the checks.
        from . import checks  # noqa: F401
        from .celery import install as install_celery
        from .conf import app_settings
        from .lifecycle import install
        from .metrics import install as install_metrics
        from .tagging import tag_management_command

        install(handlers=app_settings.SHUTDOWN_HANDLERS)
        tag_management_command()
        install_celery()
        install_metrics()
