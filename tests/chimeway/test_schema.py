"""Chimeway's schema: migrations up and down, the database's own checks, and models that match it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.migrations import CHIMEWAY, migrate_all
from chimeway.models import Base, Delivery, DeliveryAttempt, Event, Notification
from pgqueue import migrate as m

from .conftest import TEMPORARY, MakeDelivery


def tables_in(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    conn.rollback()
    return {row[0] for row in rows}


def test_migrate_all_creates_both_components_and_is_a_no_op_when_current(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    first = migrate_all(conn, empty_schema)
    again = migrate_all(conn, empty_schema)

    all_of_pgqueue = tuple(range(1, m.PGQUEUE.latest + 1))
    every_version = tuple(range(1, CHIMEWAY.latest + 1))
    assert [(s.component, s.applied) for s in first] == [
        ("pgqueue", all_of_pgqueue),
        ("chimeway", every_version),
    ]
    assert [s.applied for s in again] == [(), ()]
    assert set(CHIMEWAY.owned_tables) | {"jobs"} <= tables_in(conn, empty_schema)


def test_rolling_chimeway_back_drops_its_tables_and_leaves_the_queue(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    m.rollback(conn, schema, CHIMEWAY, to_version=0)

    remaining = tables_in(conn, schema)
    assert not remaining & set(CHIMEWAY.owned_tables)
    assert "jobs" in remaining
    assert m.migrate(conn, schema, CHIMEWAY).applied == tuple(range(1, CHIMEWAY.latest + 1))


def test_the_models_have_exactly_the_tables_and_columns_of_the_sql(sa_engine: Engine, schema: str) -> None:
    inspector = inspect(sa_engine)

    for table in Base.metadata.sorted_tables:
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name, schema=schema)}
        assert columns == {c.name: c.nullable for c in table.columns}, table.name
    assert {t.name for t in Base.metadata.sorted_tables} == set(CHIMEWAY.owned_tables)


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("status", "archived", "chimeway_deliveries_status_known"),
        ("orchestration_state", "paused", "chimeway_deliveries_orchestration_state_known"),
        ("suppression_reason", "bounced", "chimeway_deliveries_reason_only_when_ended"),
    ],
)
def test_the_database_refuses_a_delivery_state_the_code_cannot_explain(
    sa_session: Session, make_delivery: MakeDelivery, column: str, value: str, constraint: str
) -> None:
    delivery = sa_session.get(Delivery, make_delivery())
    assert delivery is not None
    setattr(delivery, column, value)

    with pytest.raises(IntegrityError, match=constraint):
        sa_session.flush()


@pytest.mark.parametrize(
    ("attempt", "constraint"),
    [
        ({"attempt_number": 0}, "chimeway_delivery_attempts_number_positive"),
        ({"outcome": "timeout"}, "chimeway_delivery_attempts_outcome_known"),
        (
            {"outcome": "succeeded", "error_class": "temporary"},
            "chimeway_delivery_attempts_outcome_matches_class",
        ),
        ({"attempt_number": 1}, "chimeway_delivery_attempts_number_unique"),
    ],
)
def test_the_database_refuses_an_attempt_row_the_classifier_could_not_produce(
    sa_session: Session, make_delivery: MakeDelivery, attempt: dict[str, Any], constraint: str
) -> None:
    delivery_id = make_delivery("dispatched")
    sa_session.add(
        DeliveryAttempt(delivery_id=delivery_id, attempt_number=1, outcome="failed", error_class="temporary")
    )
    sa_session.flush()
    row = {
        "delivery_id": delivery_id,
        "attempt_number": 2,
        "outcome": "failed",
        "error_class": "temporary",
        **attempt,
    }
    sa_session.add(DeliveryAttempt(**row))

    with pytest.raises(IntegrityError, match=constraint):
        sa_session.flush()


def test_migrating_refuses_a_foreign_chimeway_table(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty_schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(empty_schema, "chimeway_events")))
    conn.commit()

    with pytest.raises(m.ForeignTableError, match="chimeway_events"):
        migrate_all(conn, empty_schema)


def test_deleting_an_event_cascades_to_its_deliveries_and_attempts(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery_id = make_delivery("dispatched")
    deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)
    delivery = deliveries.get_delivery(sa_session, delivery_id)
    notification = sa_session.get(Notification, delivery.notification_id)
    assert notification is not None
    sa_session.delete(sa_session.get(Event, notification.event_id))
    sa_session.flush()

    assert deliveries.fetch_delivery(sa_session, delivery_id) is None
    assert sa_session.scalar(select(func.count()).where(DeliveryAttempt.delivery_id == delivery_id)) == 0
