"""Installs pgqueue's tables (``sql/pgqueue/``) in ``PGQUEUE['SCHEMA']`` through ``manage.py migrate``.

The built-in migrator does the work, so its version table records what was applied: a schema
migrated before with ``python -m pgqueue migrate`` is left as it is.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from pgqueue import migrate as pgqueue_migrate
from pgqueue.contrib.django.migrations import raw_connection


def forwards(apps: Any, schema_editor: Any) -> None:
    from pgqueue.contrib.django.conf import get_settings

    pgqueue_migrate.migrate(raw_connection(schema_editor), get_settings().schema)


def backwards(apps: Any, schema_editor: Any) -> None:
    from pgqueue.contrib.django.conf import get_settings

    pgqueue_migrate.rollback(raw_connection(schema_editor), get_settings().schema, to_version=0)


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(forwards, backwards)]
