"""Create Chimeway's tables: :data:`CHIMEWAY` for the migrator, :func:`migrate_all` for both components.

Chimeway's versioned SQL lives in ``sql/chimeway/`` (``chimeway/_sql`` in the wheel) and is
applied by :mod:`pgqueue.migrate`, which records it under the component name ``chimeway``. From an
Alembic revision: ``pgqueue.migrate.alembic_upgrade(op, schema, CHIMEWAY)``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgqueue.migrate import PGQUEUE, MigrationSet, MigrationStatus, migrate

__all__ = ["CHIMEWAY", "migrate_all"]

CHIMEWAY = MigrationSet.from_package(
    "chimeway",
    "chimeway",
    owned_tables=(
        "chimeway_events",
        "chimeway_notifications",
        "chimeway_deliveries",
        "chimeway_delivery_attempts",
        "chimeway_notification_preferences",
        "chimeway_category_preferences",
        "chimeway_policy_settings",
        "chimeway_journey_definitions",
        "chimeway_journey_runs",
        "chimeway_journey_transitions",
        "chimeway_digest_rules",
        "chimeway_digest_buckets",
        "chimeway_digest_memberships",
    ),
)


def migrate_all(conn: psycopg.Connection[Any], schema: str = "public") -> tuple[MigrationStatus, ...]:
    """Bring ``schema`` up to date for pgqueue, then for Chimeway (whose jobs run on pgqueue)."""
    return tuple(migrate(conn, schema, component) for component in (PGQUEUE, CHIMEWAY))
