"""chimeway 0002 (the inbox): up and down over existing rows, its check, its stamp, and odd schema names."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chimeway import inbox
from chimeway.migrations import CHIMEWAY, migrate_all
from chimeway.models import Base
from pgqueue import migrate as m
from tests.helpers import wait_until

from ..conftest import SessionFactory
from .conftest import SHARED_SERVER_PATIENCE, AddNotifications

INBOX_INDEXES = {
    "chimeway_notifications_inbox_idx": "WHERE (archived_at IS NULL)",
    "chimeway_notifications_category_idx": "WHERE ((archived_at IS NULL) AND (category IS NOT NULL))",
    "chimeway_notifications_unread_idx": "WHERE ((read_at IS NULL) AND (archived_at IS NULL))",
    "chimeway_notifications_archived_idx": "WHERE (archived_at IS NOT NULL)",
    "chimeway_notifications_changes_idx": "(recipient_identity, changed_xid, id)",
}
INBOX_FUNCTIONS = {
    "chimeway_inbox_channel",
    "chimeway_notifications_stamp_change",
    "chimeway_notifications_notify_change",
}


def indexes(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
        (schema, "chimeway_notifications"),
    ).fetchall()
    return dict(rows)


def columns(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, "chimeway_notifications"),
    ).fetchall()
    return {row[0] for row in rows}


def functions(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = to_regnamespace(%s)",
        (sql.Identifier(schema).as_string(None),),
    ).fetchall()
    return {row[0] for row in rows}


def test_0002_migrates_existing_notifications_up_and_down_and_up_again(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    schema = empty_schema
    m.migrate(conn, schema, m.PGQUEUE)
    m.migrate(conn, schema, CHIMEWAY, to_version=1)
    table = sql.Identifier(schema, "chimeway_notifications")
    conn.execute(
        sql.SQL(
            "WITH e AS (INSERT INTO {} (notification_key, notification_version, idempotency_key)"
            " VALUES ('k', 1, 'k-1') RETURNING id)"
            " INSERT INTO {} (event_id, recipient_identity, recipient_type)"
            " SELECT id, 'user:1', 'user' FROM e"
        ).format(sql.Identifier(schema, "chimeway_events"), table)
    )
    conn.commit()

    assert m.migrate(conn, schema, CHIMEWAY, to_version=2).applied == (2,)
    row = conn.execute(sql.SQL("SELECT category, changed_xid FROM {}").format(table)).fetchone()
    assert row is not None
    assert row[0] is None
    assert row[1] > 0
    found = indexes(conn, schema)
    for name, shape in INBOX_INDEXES.items():
        assert shape in found[name], found[name]
    assert functions(conn, schema) >= INBOX_FUNCTIONS
    conn.commit()

    assert m.rollback(conn, schema, CHIMEWAY, to_version=1).reverted == (2,)
    assert {"category", "changed_xid"}.isdisjoint(columns(conn, schema))
    found = indexes(conn, schema)
    assert found["chimeway_notifications_inbox_idx"].endswith("(recipient_identity, read_at, inserted_at)")
    assert set(INBOX_INDEXES) & set(found) == {"chimeway_notifications_inbox_idx"}
    assert not INBOX_FUNCTIONS & functions(conn, schema)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (1,)
    conn.commit()

    assert m.migrate(conn, schema, CHIMEWAY, to_version=2).applied == (2,)


def test_a_blank_category_is_refused_by_the_database(
    sa_session: Session, add_notifications: AddNotifications
) -> None:
    with pytest.raises(IntegrityError, match="chimeway_notifications_category_not_blank"):
        add_notifications(category="  ")


def test_an_update_stamps_the_row_only_when_what_the_inbox_shows_changes(
    add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    (notification_id,) = add_notifications()

    table = Base.metadata.tables["chimeway_notifications"]

    def update_with(**assignment: Any) -> tuple[int, int]:
        """(the updating transaction's id, the row's changed_xid after the update)"""
        with new_session() as session, session.begin():
            xid = session.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one()
            session.execute(update(table).where(table.c.id == notification_id).values(**assignment))
            stamp = session.execute(
                select(table.c.changed_xid).where(table.c.id == notification_id)
            ).scalar_one()
        return xid, stamp

    _, created = update_with(updated_at=func.now())
    for not_shown in [{"recipient_type": "team"}, {"read_at": None}, {"updated_at": func.now()}]:
        xid, stamp = update_with(**not_shown)
        assert stamp == created != xid, not_shown
    for shown in [
        {"category": "billing"},
        {"metadata": {"n": 1}},
        {"seen_at": func.now()},
        {"archived_at": func.now()},
    ]:
        xid, stamp = update_with(**shown)
        assert stamp == xid, shown


def test_the_inbox_works_in_a_schema_whose_name_needs_quoting(
    dsn: str, sa_engine: Engine, new_session: SessionFactory
) -> None:
    schema = f'Inbox "odd" name {uuid.uuid4().hex[:6]}'
    try:
        with psycopg.connect(dsn) as conn:
            migrate_all(conn, schema)
        engine = sa_engine.execution_options(schema_translate_map={None: schema})
        with Session(engine) as session:
            cursor = inbox.changes_cursor(session)
            session.commit()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL(
                        "WITH e AS (INSERT INTO {} (notification_key, notification_version, idempotency_key)"
                        " VALUES ('k', 1, 'k-1') RETURNING id)"
                        " INSERT INTO {} (event_id, recipient_identity, recipient_type)"
                        " SELECT id, 'user:1', 'user' FROM e"
                    ).format(
                        sql.Identifier(schema, "chimeway_events"),
                        sql.Identifier(schema, "chimeway_notifications"),
                    )
                )  # from a connection whose search_path does not name the schema
            (item,) = inbox.list_for_recipient(session, "user:1").items
            assert inbox.mark_read(session, "user:1", item.id)
            session.commit()
            assert inbox.counts(session, "user:1") == inbox.InboxCounts(unseen=0, unread=0)

            def read_in_the_feed() -> bool:
                changes = inbox.changes_since(session, "user:1", cursor)
                session.commit()
                return [i.id for i in changes.items] == [item.id] and changes.items[0].read

            wait_until(read_in_the_feed, timeout=SHARED_SERVER_PATIENCE)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
