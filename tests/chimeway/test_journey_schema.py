"""chimeway 0005 (journeys, rendering): up and down over existing rows, and the checks it adds."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from chimeway.migrations import CHIMEWAY
from pgqueue import migrate as m

JOURNEY_TABLES = {"chimeway_journey_definitions", "chimeway_journey_runs", "chimeway_journey_transitions"}
RENDER_COLUMNS = {"render_key", "render_version", "render_data", "journey_run_id", "journey_step"}


def tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    return {row[0] for row in rows.fetchall()}


def delivery_columns(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, "chimeway_deliveries"),
    )
    return {row[0] for row in rows.fetchall()}


def _delivery(conn: psycopg.Connection[Any], schema: str) -> None:
    names = {
        t: sql.Identifier(schema, t)
        for t in ("chimeway_events", "chimeway_notifications", "chimeway_deliveries")
    }
    conn.execute(
        sql.SQL(
            "WITH e AS (INSERT INTO {events} (notification_key, notification_version, idempotency_key)"
            " VALUES ('k', 1, 'k-1') RETURNING id),"
            " n AS (INSERT INTO {notifications} (event_id, recipient_identity, recipient_type)"
            " SELECT id, 'user:1', 'user' FROM e RETURNING id)"
            " INSERT INTO {deliveries} (notification_id, channel) SELECT id, 'email' FROM n"
        ).format(
            events=names["chimeway_events"],
            notifications=names["chimeway_notifications"],
            deliveries=names["chimeway_deliveries"],
        )
    )


def test_0005_migrates_existing_deliveries_up_and_down_and_up_again(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    schema = empty_schema
    m.migrate(conn, schema, m.PGQUEUE)
    m.migrate(conn, schema, CHIMEWAY, to_version=4)
    _delivery(conn, schema)
    conn.commit()

    assert m.migrate(conn, schema, CHIMEWAY, to_version=5).applied == (5,)
    assert tables(conn, schema) >= JOURNEY_TABLES
    assert delivery_columns(conn, schema) >= RENDER_COLUMNS
    deliveries = sql.Identifier(schema, "chimeway_deliveries")
    row = conn.execute(sql.SQL("SELECT render_key, render_data FROM {}").format(deliveries)).fetchone()
    assert row == (None, {})  # existing rows: no template, empty data
    conn.commit()

    assert m.rollback(conn, schema, CHIMEWAY, to_version=4).reverted == (5,)
    assert not JOURNEY_TABLES & tables(conn, schema)
    assert not RENDER_COLUMNS & delivery_columns(conn, schema)
    conn.commit()
    assert m.migrate(conn, schema, CHIMEWAY, to_version=5).applied == (5,)


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("render_key = 'welcome', render_version = 0", "chimeway_deliveries_render_version_positive"),
        ("render_key = 'welcome'", "chimeway_deliveries_render_pair"),
        ("render_data = '[]'", "chimeway_deliveries_render_data_object"),
    ],
)
def test_the_rendering_columns_refuse_bad_values(
    conn: psycopg.Connection[Any], schema: str, assignment: str, constraint: str
) -> None:
    _delivery(conn, schema)
    deliveries = sql.Identifier(schema, "chimeway_deliveries")
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        conn.execute(sql.SQL("UPDATE {} SET " + assignment).format(deliveries))  # type: ignore[arg-type]
