"""The Django app: add ``"pgqueue.contrib.django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

from .conf import check_database, get_settings


class PgQueueConfig(AppConfig):
    name = "pgqueue.contrib.django"
    label = "pgqueue"
    verbose_name = "pgqueue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # At startup, not at the first enqueue: a project on another database fails at once.
        check_database(get_settings().database)
