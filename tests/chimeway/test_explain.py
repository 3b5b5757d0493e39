"""explain_delivery: the story of a delivery told from its rows alone."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.errors import DeliveryNotFound

from .conftest import PERMANENT, SUCCEEDED, TEMPORARY, MakeDelivery, MakeNotification, SessionFactory


def test_a_delivery_that_failed_once_then_succeeded_tells_both_attempts_in_order(
    new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    # Given a delivery whose first attempt failed temporarily and whose retry succeeded
    # (as a dispatcher would do it: commit each change, so no transaction outlives it)
    notification_id = make_notification(recipient="user:7", correlation_id="req-9")
    session = new_session(expire_on_commit=False)
    delivery = deliveries.plan_delivery(session, notification_id, "email")
    for outcome in (TEMPORARY, SUCCEEDED):
        deliveries.transition_status(session, delivery, "dispatched")
        deliveries.record_attempt(session, delivery.id, outcome)

    # When it is explained
    story = deliveries.explain_delivery(new_session(), delivery.id)

    # Then the story names who and what, both attempts, a dated timeline and why it ended there
    assert (story.delivery_id, story.notification_id, story.channel) == (
        delivery.id,
        notification_id,
        "email",
    )
    assert (story.notification_key, story.recipient, story.correlation_id) == (
        "comment_posted",
        "user:7",
        "req-9",
    )
    assert (story.status, story.suppression_reason) == ("succeeded", None)
    assert [(a.number, a.outcome, a.error_class, a.adapter) for a in story.attempts] == [
        (1, "failed", "temporary", "test"),
        (2, "succeeded", None, "test"),
    ]
    assert [entry.event for entry in story.timeline] == [
        "event_created",
        "delivery_planned",
        "attempt_failed",
        "attempt_succeeded",
        "succeeded",
    ]
    assert [entry.at for entry in story.timeline] == sorted(entry.at for entry in story.timeline)
    assert story.timeline[2].detail["attempt_number"] == 1
    assert story.why == "succeeded on attempt 2 after 1 temporary failure"
    assert story.last_attempt == story.attempts[-1]


def test_an_exhausted_delivery_says_it_was_cancelled_after_its_temporary_failures(
    new_session: SessionFactory, make_delivery: MakeDelivery
) -> None:
    # Given a delivery that failed temporarily five times and was then exhausted
    session = new_session(expire_on_commit=False)
    delivery = deliveries.get_delivery(session, make_delivery("pending"))
    session.commit()
    for _ in range(5):
        deliveries.transition_status(session, delivery, "dispatched")
        deliveries.record_attempt(session, delivery.id, TEMPORARY)
    deliveries.exhaust_delivery(session, delivery)

    # When it is explained
    story = deliveries.explain_delivery(new_session(), delivery.id)

    # Then
    assert (story.status, story.suppression_reason, story.policy_checkpoint) == (
        "cancelled",
        "retries_exhausted",
        "perform",
    )
    assert [a.number for a in story.attempts] == [1, 2, 3, 4, 5]
    assert {a.error_class for a in story.attempts} == {"temporary"}
    assert [entry.event for entry in story.timeline][-2:] == ["attempt_failed", "cancelled"]
    assert story.timeline[-1].detail == {
        "suppression_reason": "retries_exhausted",
        "policy_checkpoint": "perform",
    }
    assert story.why == "cancelled after 5 temporary failures: retries exhausted"


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ("pending", "pending: planned, not dispatched yet"),
        ("dispatched", "dispatched for attempt 1; its outcome is not recorded yet"),
        ("suppressed", "suppressed by policy at the planning checkpoint: channel_disabled"),
        ("cancelled", "cancelled by hand before it was sent, with no reason recorded"),
    ],
)
def test_why_explains_a_delivery_without_attempts(
    sa_session: Session, make_delivery: MakeDelivery, status: str, why: str
) -> None:
    story = deliveries.explain_delivery(sa_session, make_delivery(status))

    assert story.attempts == ()
    assert story.why == why


def test_why_names_the_attempt_that_ended_a_delivery_for_good(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery_id = make_delivery("dispatched")
    deliveries.record_attempt(sa_session, delivery_id, PERMANENT)

    story = deliveries.explain_delivery(sa_session, delivery_id)

    assert story.why == "cancelled on attempt 1: the provider refused it for good (permanent failure)"


def test_why_of_a_failed_delivery_expects_a_retry(sa_session: Session, make_delivery: MakeDelivery) -> None:
    delivery_id = make_delivery("dispatched")
    deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)

    assert deliveries.explain_delivery(sa_session, delivery_id).why == (
        "failed on attempt 1 (temporary); a retry is expected"
    )


def test_explaining_a_missing_delivery_names_it(sa_session: Session) -> None:
    missing = uuid.uuid4()

    with pytest.raises(DeliveryNotFound, match=str(missing)):
        deliveries.explain_delivery(sa_session, missing)


def test_a_delivery_suppressed_because_its_notification_was_read_shows_the_read_in_its_timeline(
    sa_session: Session, make_notification: MakeNotification
) -> None:
    delivery = deliveries.plan_delivery(
        sa_session, make_notification(read=True), "email", delay_fallback=True
    )
    deliveries.suppress_delivery(sa_session, delivery, "already_read", checkpoint="perform")

    story = deliveries.explain_delivery(sa_session, delivery.id)

    assert [entry.event for entry in story.timeline] == [
        "event_created",
        "notification_read",
        "delivery_planned",
        "suppressed",
    ]
    assert story.why == "suppressed by policy at the perform checkpoint: already_read"
