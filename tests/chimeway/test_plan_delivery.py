"""Planning: one delivery per (notification, channel), whoever plans it and how often."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.errors import InvalidValue, NotificationNotFound
from chimeway.models import Delivery

from .conftest import MakeNotification, SessionFactory


def count_deliveries(session: Session, notification_id: uuid.UUID) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.notification_id == notification_id)
        )
        or 0
    )


def test_planned_delivery_is_pending_ready_and_stores_the_channel_as_a_string(
    sa_session: Session, make_notification: MakeNotification, new_session: SessionFactory
) -> None:
    # Given a notification
    notification_id = make_notification()

    # When it is planned for in_app
    delivery = deliveries.plan_delivery(
        sa_session, notification_id, "in_app", notification_key="comment_posted"
    )

    # Then a committed pending, ready row exists with the channel as the string "in_app"
    stored = deliveries.get_delivery(new_session(), delivery.id)
    assert (stored.status, stored.orchestration_state, stored.channel) == ("pending", "ready", "in_app")
    assert stored.suppression_reason is None
    assert stored.delay_fallback is False
    assert (stored.tenant_id, stored.actor_id) == ("default", "system")
    assert stored.metadata_ == {"notification_key": "comment_posted"}


def test_planning_the_same_channel_twice_returns_the_existing_row_with_its_current_status(
    sa_session: Session, make_notification: MakeNotification
) -> None:
    # Given a delivery that has moved on since it was planned
    notification_id = make_notification()
    first = deliveries.plan_delivery(sa_session, notification_id, "in_app")
    deliveries.transition_status(sa_session, first, "dispatched")
    sa_session.commit()

    # When the same (notification, channel) is planned again
    again = deliveries.plan_delivery(sa_session, notification_id, "in_app", metadata={"ignored": True})

    # Then there is still one row, returned with its real status and untouched metadata
    assert again.id == first.id
    assert again.status == "dispatched"
    assert "ignored" not in again.metadata_
    assert count_deliveries(sa_session, notification_id) == 1


def test_one_notification_planned_on_two_channels_has_two_deliveries(
    sa_session: Session, make_notification: MakeNotification
) -> None:
    notification_id = make_notification()

    in_app = deliveries.plan_delivery(sa_session, notification_id, "in_app")
    email = deliveries.plan_delivery(sa_session, notification_id, "email")

    assert in_app.id != email.id
    assert {in_app.channel, email.channel} == {"in_app", "email"}
    assert count_deliveries(sa_session, notification_id) == 2


def test_ten_concurrent_planners_of_one_channel_create_exactly_one_delivery(
    make_notification: MakeNotification, new_session: SessionFactory
) -> None:
    # Given one notification and ten sessions, each on its own connection
    notification_id = make_notification()
    sessions = [new_session() for _ in range(10)]
    start = threading.Barrier(len(sessions))

    def plan(session: Session) -> uuid.UUID:
        start.wait()
        return deliveries.plan_delivery(session, notification_id, "email").id

    # When all of them plan the same channel at once
    with ThreadPoolExecutor(len(sessions)) as pool:
        ids = list(pool.map(plan, sessions))

    # Then every planner got the same single row
    assert len(set(ids)) == 1
    assert count_deliveries(new_session(), notification_id) == 1


def test_planning_inside_a_caller_transaction_is_undone_by_its_rollback(
    sa_session: Session, make_notification: MakeNotification, new_session: SessionFactory
) -> None:
    notification_id = make_notification()

    sa_session.begin()
    deliveries.plan_delivery(sa_session, notification_id, "in_app")
    assert count_deliveries(new_session(), notification_id) == 0  # the caller has not committed
    sa_session.rollback()

    assert count_deliveries(new_session(), notification_id) == 0


def test_planning_for_a_missing_notification_names_it(sa_session: Session) -> None:
    missing = uuid.uuid4()

    with pytest.raises(NotificationNotFound, match=str(missing)):
        deliveries.plan_delivery(sa_session, missing, "in_app")


@pytest.mark.parametrize("channel", ["", "   ", None])
def test_planning_refuses_a_blank_channel(
    sa_session: Session, make_notification: MakeNotification, channel: object
) -> None:
    with pytest.raises(InvalidValue, match="channel must be a non-empty string"):
        deliveries.plan_delivery(sa_session, make_notification(), channel)  # type: ignore[arg-type]
