"""Brings ``PGQUEUE['SCHEMA']`` to pgqueue's version 9 (the limited fetch counts executing
jobs by the same plan without statistics).

Like ``0002_dashboard``: a schema an earlier migration left at version 8 would otherwise stay
there, and nodes refuse to start on it.
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

    pgqueue_migrate.rollback(raw_connection(schema_editor), get_settings().schema, to_version=8)


class Migration(migrations.Migration):
    dependencies: list[tuple[str, str]] = [("pgqueue", "0007_workflow_release")]
    operations = [migrations.RunPython(forwards, backwards)]
