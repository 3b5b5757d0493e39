"""chimeway 0004 (policies): up and down over existing rows, and the checks that refuse bad settings."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from chimeway.migrations import CHIMEWAY
from pgqueue import migrate as m

POLICY_FUNCTIONS = {"chimeway_quiet_until", "chimeway_cap_grant", "chimeway_cap_record"}


def functions(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = to_regnamespace(%s)",
        (sql.Identifier(schema).as_string(None),),
    ).fetchall()
    return {row[0] for row in rows}


def delivery_columns(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, "chimeway_deliveries"),
    ).fetchall()
    return {row[0] for row in rows}


def test_0004_migrates_existing_deliveries_up_and_down_and_up_again(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    schema = empty_schema
    m.migrate(conn, schema, m.PGQUEUE)
    m.migrate(conn, schema, CHIMEWAY, to_version=3)
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
    conn.commit()

    assert m.migrate(conn, schema, CHIMEWAY, to_version=4).applied == (4,)
    assert {"next_eligible_at", "planning_reason", "planning_context"} <= delivery_columns(conn, schema)
    assert functions(conn, schema) >= POLICY_FUNCTIONS
    conn.execute(
        sql.SQL(
            "UPDATE {} SET orchestration_state = 'deferred', next_eligible_at = now() + interval '1 hour',"
            " planning_reason = 'quiet_hours'"
        ).format(names["chimeway_deliveries"])
    )
    conn.commit()

    assert m.rollback(conn, schema, CHIMEWAY, to_version=3).reverted == (4,)
    assert not {"next_eligible_at", "planning_reason", "planning_context"} & delivery_columns(conn, schema)
    assert not POLICY_FUNCTIONS & functions(conn, schema)
    # a deferred delivery can't stay deferred without its release time: it is ready again
    state = conn.execute(sql.SQL("SELECT orchestration_state FROM {}").format(names["chimeway_deliveries"]))
    assert state.fetchall() == [("ready",)]
    conn.commit()

    assert m.migrate(conn, schema, CHIMEWAY, to_version=4).applied == (4,)


@pytest.mark.parametrize(
    "values",
    [
        "(quiet_hours_start_minute, quiet_hours_end_minute, time_zone) VALUES (600, 600, 'UTC')",
        "(quiet_hours_start_minute, quiet_hours_end_minute, time_zone) VALUES (1440, 60, 'UTC')",
        "(quiet_hours_start_minute, quiet_hours_end_minute) VALUES (60, 120)",
        "(delivery_cap_count, delivery_cap_window_minutes) VALUES (0, 60)",
        "(delivery_cap_count, delivery_cap_window_minutes) VALUES (3, -1)",
        "(delivery_cap_count) VALUES (3)",
    ],
)
def test_the_database_refuses_settings_the_code_would_refuse(
    conn: psycopg.Connection[Any], schema: str, values: str
) -> None:
    columns, rest = values.split(" VALUES ")
    statement = sql.SQL(
        "INSERT INTO {} (recipient_id, "
        + columns.strip("()")
        + ") VALUES ('user:1', "
        + rest.strip("()")
        + ")"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(statement.format(sql.Identifier(schema, "chimeway_policy_settings")))
    conn.rollback()
