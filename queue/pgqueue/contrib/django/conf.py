"""pgqueue's Django settings: the ``PGQUEUE`` dict, read and checked once.

::

    PGQUEUE = {
        "DATABASE": "default",        # the DATABASES alias jobs are written through
        "SCHEMA": "public",           # where the jobs table lives
        "QUEUES": {"default": 10},    # what `manage.py pgqueue_worker` runs (queue: concurrency)
        "WORKERS": ["shop.workers"],  # modules the worker process imports (their Workers register)
        "TASK_MODULES": [],           # modules holding django.tasks tasks (the task backend)
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from ...migrate import validate_schema_name

__all__ = ["PgQueueSettings", "check_database", "conninfo", "get_settings"]

_KNOWN = frozenset({"DATABASE", "SCHEMA", "QUEUES", "WORKERS", "TASK_MODULES"})


@dataclass(frozen=True, slots=True)
class PgQueueSettings:
    database: str
    schema: str
    queues: dict[str, Any]
    workers: tuple[str, ...]
    task_modules: tuple[str, ...]


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ImproperlyConfigured(f"PGQUEUE[{name!r}] must be a list of module names, got {value!r}")
    return tuple(value)


def get_settings() -> PgQueueSettings:
    raw = getattr(django_settings, "PGQUEUE", {})
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"PGQUEUE must be a dict, got {type(raw).__name__}")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise ImproperlyConfigured(
            f"PGQUEUE has an unknown key {sorted(unknown)[0]!r}; known: {sorted(_KNOWN)}"
        )
    database = raw.get("DATABASE", "default")
    if database not in django_settings.DATABASES:
        raise ImproperlyConfigured(f"PGQUEUE['DATABASE'] is {database!r}, which DATABASES does not define")
    schema = raw.get("SCHEMA", "public")
    try:
        validate_schema_name(schema)
    except ValueError as exc:
        raise ImproperlyConfigured(f"PGQUEUE['SCHEMA']: {exc}") from None
    queues = raw.get("QUEUES", {"default": 10})
    if not isinstance(queues, dict):
        raise ImproperlyConfigured(f"PGQUEUE['QUEUES'] must be a dict of queue: limit, got {queues!r}")
    return PgQueueSettings(
        database,
        schema,
        dict(queues),
        _strings(raw.get("WORKERS", []), "WORKERS"),
        _strings(raw.get("TASK_MODULES", []), "TASK_MODULES"),
    )


def check_database(alias: str) -> None:
    """Refuse a database that is not PostgreSQL, naming the alias and its engine."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        engine = connection.settings_dict.get("ENGINE", "?")
        raise ImproperlyConfigured(
            f"pgqueue needs PostgreSQL: DATABASES[{alias!r}] uses {engine} ({connection.vendor}); "
            "set PGQUEUE['DATABASE'] to a PostgreSQL alias"
        )


def conninfo(alias: str) -> str:
    """A libpq connection string for the runtime, from the alias's settings."""
    import psycopg

    params = connections[alias].get_connection_params()
    keep = {str(k): v for k, v in params.items() if isinstance(v, str | int) and not isinstance(v, bool)}
    return psycopg.conninfo.make_conninfo("", **keep)
