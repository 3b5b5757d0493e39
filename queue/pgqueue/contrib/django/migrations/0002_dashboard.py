"""Brings ``PGQUEUE['SCHEMA']`` to pgqueue's latest version (0003 adds the dashboard's index).

A schema that ``0001_initial`` migrated before pgqueue 0003 existed would otherwise stay at
version 2, and nodes refuse to start on it.
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

    pgqueue_migrate.rollback(raw_connection(schema_editor), get_settings().schema, to_version=2)


class Migration(migrations.Migration):
    dependencies: list[tuple[str, str]] = [("pgqueue", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
