"""Exhausting a delivery's retries: only from failed, keeping its metadata (behaviours 9 and 10)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.errors import InvalidExhaust

from .conftest import MakeDelivery, SessionFactory


def test_exhausting_a_failed_delivery_cancels_it_and_keeps_its_metadata(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Given a failed delivery planned with tracing metadata
    delivery = deliveries.get_delivery(sa_session, make_delivery("failed"))
    sa_session.commit()

    # When its retries are exhausted
    changed = deliveries.exhaust_delivery(sa_session, delivery)

    # Then it is cancelled for retries_exhausted at the perform checkpoint, earlier keys intact
    stored = deliveries.get_delivery(new_session(), delivery.id)
    assert changed is True
    assert (stored.status, stored.suppression_reason) == ("cancelled", "retries_exhausted")
    assert stored.metadata_ == {
        "notification_key": "comment_posted",
        "correlation_id": "req-1",
        "policy_checkpoint": "perform",
    }


@pytest.mark.parametrize("status", ["pending", "dispatched", "succeeded", "suppressed", "cancelled"])
def test_exhausting_a_delivery_that_is_not_failed_is_refused_with_its_status(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory, status: str
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery(status))

    with pytest.raises(
        InvalidExhaust, match=f"only a 'failed' delivery can be exhausted, this one is {status!r}"
    ):
        deliveries.exhaust_delivery(sa_session, delivery)

    assert deliveries.get_delivery(new_session(), delivery.id).status == status
