"""Fixtures for Chimeway: committed events, notifications and deliveries in the test's schema.

Setup data is written through short-lived sessions of its own and committed, so the session a
test acts through (``sa_session``) starts with no transaction open, and other connections (the
concurrency tests' threads) see the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from chimeway import deliveries, dispatch, telemetry
from chimeway.adapters import TestAdapter, resolve_adapter
from chimeway.deliveries import AttemptOutcome
from chimeway.dispatch import ChannelRoute, Dispatcher
from chimeway.models import Event, Notification

from .journey_fixtures import journey_dispatcher  # noqa: F401  (a fixture of the journey tests)

SessionFactory = Callable[..., Session]
TelemetryEvent = tuple[tuple[str, ...], Mapping[str, int | float], Mapping[str, Any]]

TEMPORARY = AttemptOutcome("failed", "temporary", {"status_code": 503}, adapter="test")
SUCCEEDED = AttemptOutcome("succeeded", None, {"ok": True}, adapter="test")
PERMANENT = AttemptOutcome("rejected", "permanent", {"status_code": 400}, adapter="test")
BOUNCED = AttemptOutcome("bounced", "bounced", {"status_code": 410}, adapter="test")


@pytest.fixture
def new_session(sa_engine: Engine, schema: str) -> Iterator[SessionFactory]:
    """Open extra sessions on the test's schema (one per thread, or one to read what was committed)."""
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    opened: list[Session] = []

    def open_session(**options: Any) -> Session:
        session = Session(engine, **options)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


class MakeNotification(Protocol):
    def __call__(
        self,
        *,
        notification_key: str = ...,
        recipient: str = ...,
        correlation_id: str | None = ...,
        read: bool = ...,
    ) -> uuid.UUID: ...


@pytest.fixture
def make_notification(new_session: SessionFactory) -> MakeNotification:
    """Commit an event and one notification for it; returns the notification's id."""

    def make(
        *,
        notification_key: str = "comment_posted",
        recipient: str = "user:42",
        correlation_id: str | None = None,
        read: bool = False,
    ) -> uuid.UUID:
        with new_session() as session, session.begin():
            event = Event(
                notification_key=notification_key,
                notification_version=1,
                idempotency_key=f"test-{uuid.uuid4()}",
                payload={"comment_id": 7},
                correlation_id=correlation_id,
            )
            session.add(event)
            session.flush()
            notification = Notification(
                event_id=event.id,
                recipient_identity=recipient,
                recipient_type="user",
                metadata_={"subject": "New comment", "body": "Nice post!"},
            )
            session.add(notification)
            session.flush()
            if read:
                notification.read_at = notification.inserted_at
            return notification.id

    return make


class MakeDelivery(Protocol):
    def __call__(
        self, status: str = ..., *, channel: str = ..., notification_id: uuid.UUID | None = ...
    ) -> uuid.UUID: ...


@pytest.fixture
def make_delivery(make_notification: MakeNotification, new_session: SessionFactory) -> MakeDelivery:
    """Commit a delivery brought to ``status`` through the state machine itself; returns its id.

    No attempt rows are written: dispatched → failed/succeeded go through transition_status.
    """
    paths: dict[str, tuple[str, ...]] = {
        "pending": (),
        "dispatched": ("dispatched",),
        "failed": ("dispatched", "failed"),
        "succeeded": ("dispatched", "succeeded"),
        "cancelled": ("cancelled",),
    }

    def make(
        status: str = "pending", *, channel: str = "in_app", notification_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        with new_session() as session:
            delivery = deliveries.plan_delivery(
                session,
                notification_id or make_notification(),
                channel,
                notification_key="comment_posted",
                correlation_id="req-1",
            )
            if status == "suppressed":
                deliveries.suppress_delivery(session, delivery, "channel_disabled", checkpoint="planning")
            else:
                for step in paths[status]:
                    assert deliveries.transition_status(session, delivery, step)
            session.commit()
            assert delivery.status == status
            return delivery.id

    return make


@pytest.fixture
def test_adapter() -> Iterator[TestAdapter]:
    """The shared in-memory adapter (``resolve_adapter("test")``), empty before and after the test."""
    adapter = resolve_adapter("test")
    assert isinstance(adapter, TestAdapter)
    adapter.clear()
    yield adapter
    adapter.clear()


@pytest.fixture
def telemetry_events() -> Iterator[list[TelemetryEvent]]:
    """Every telemetry event emitted during the test, in order."""
    events: list[TelemetryEvent] = []

    def handler(
        event: tuple[str, ...], measurements: Mapping[str, int | float], metadata: Mapping[str, Any]
    ) -> None:
        events.append((event, measurements, metadata))

    telemetry.attach(handler)
    yield events
    telemetry.detach(handler)


@pytest.fixture
def engine(sa_engine: Engine, schema: str) -> Engine:
    """The test engine with Chimeway's tables mapped to the test's schema."""
    return sa_engine.execution_options(schema_translate_map={None: schema})


@pytest.fixture
def dispatcher(engine: Engine, dsn: str, schema: str, test_adapter: TestAdapter) -> Iterator[Dispatcher]:
    """A dispatcher routing every channel to ``test_adapter``, configured for the process."""
    configured = Dispatcher(
        dsn,
        schema=schema,
        default=ChannelRoute(test_adapter),
        session_factory=lambda: Session(engine, expire_on_commit=False),
    )
    dispatch.configure(configured)
    yield configured
    dispatch.configure(None)
