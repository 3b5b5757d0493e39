"""Shared pieces of the journey and rendering tests: a dispatcher on the test adapter, notifiers
with journeys, and readers of a run's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import chimeway
from chimeway import dispatch
from chimeway.adapters import TestAdapter
from chimeway.dispatch import ChannelRoute, Dispatcher
from chimeway.journeys import Journey, Step
from chimeway.rendering import Template, Templates
from pgqueue.testing import DrainResult, drain_queue

TEMPLATES = [
    Template("welcome", 1, "email", {"subject": "Hi {{ name }}", "html": "<p>{{ body }}</p>"}, html=True),
    Template("welcome", 1, "sms", {"body": "Hi {{ name }}: {{ body }}"}),
]


@pytest.fixture
def journey_dispatcher(
    sa_engine: Engine, dsn: str, schema: str, test_adapter: TestAdapter
) -> Iterator[Dispatcher]:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    configured = Dispatcher(
        dsn,
        schema=schema,
        default=ChannelRoute(test_adapter),
        session_factory=lambda: Session(engine, expire_on_commit=False),
        templates=Templates(TEMPLATES),
    )
    dispatch.configure(configured)
    yield configured
    dispatch.configure(None)


def notifier(journey: Journey, key: str = "onboarding") -> chimeway.Notifier:
    class Journeyed(chimeway.Notifier):
        notification_key = key

        def recipients(self, params: Any) -> list[str]:
            return list(params["users"])

        def build(self, params: Any, recipient: Any) -> dict[str, Any]:
            return {"name": recipient.identity, "body": params.get("body", "<b>welcome</b>")}

    Journeyed.journey = journey
    return Journeyed()


def three_steps(key: str = "onboarding", **options: Any) -> Journey:
    return Journey(
        key,
        1,
        [
            Step(1, "in_app", key="inbox"),
            Step(2, "email", key="mail", when=["bounced", "permanent_failure"]),
            Step(3, "sms", key="text"),
        ],
        **options,
    )


def drain(dsn: str, schema: str) -> DrainResult:
    return drain_queue(dsn, dispatch.QUEUE, schema=schema, with_recursion=True)


def schema_of(session: Session) -> str:
    return str(session.connection().get_execution_options()["schema_translate_map"][None])


def sql(session: Session, statement: str) -> Any:
    """``statement`` with ``{s}`` as the test's schema (text() is not schema-translated)."""
    return text(statement.replace("{s}", f'"{schema_of(session)}"'))


def run_row(session: Session, run_id: uuid.UUID) -> tuple[Any, ...]:
    row = session.execute(
        sql(
            session,
            "SELECT state, current_step, outcomes, terminal_reason "
            "FROM {s}.chimeway_journey_runs WHERE id = :id",
        ),
        {"id": run_id},
    ).one()
    return tuple(row)


def transitions(session: Session, run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    rows = session.execute(
        sql(
            session,
            "SELECT step, from_state, to_state, reason FROM {s}.chimeway_journey_transitions "
            "WHERE run_id = :id ORDER BY id",
        ),
        {"id": run_id},
    ).all()
    return [tuple(r) for r in rows]


def step_deliveries(session: Session, run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    rows = session.execute(
        sql(
            session,
            "SELECT journey_step, channel, status, suppression_reason FROM {s}.chimeway_deliveries "
            "WHERE journey_run_id = :id ORDER BY journey_step",
        ),
        {"id": run_id},
    ).all()
    return [tuple(r) for r in rows]


def trigger(
    session: Session, journey_notifier: chimeway.Notifier, users: Sequence[str], **params: Any
) -> Any:
    schema = schema_of(session)
    result = chimeway.trigger(
        session,
        journey_notifier,
        {"users": list(users), **params},
        idempotency_key=str(uuid.uuid4()),
        queue_schema=schema,
    )
    session.commit()
    return result
