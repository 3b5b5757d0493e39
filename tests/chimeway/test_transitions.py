"""The transition table, suppression and the terminal states (reference §2.1, behaviours 4 to 8 and 11)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.errors import InvalidTransition, InvalidValue

from .conftest import MakeDelivery, SessionFactory


def test_terminal_states_are_succeeded_suppressed_cancelled_and_digested() -> None:
    assert deliveries.terminal_states() == ("succeeded", "suppressed", "cancelled", "digested")


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("pending", "dispatched"),
        ("pending", "suppressed"),
        ("pending", "cancelled"),
        ("dispatched", "succeeded"),
        ("dispatched", "failed"),
        ("dispatched", "suppressed"),
        ("failed", "dispatched"),
    ],
)
def test_allowed_transition_is_written_and_committed(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory, start: str, target: str
) -> None:
    # Given a delivery in the start status
    delivery = deliveries.get_delivery(sa_session, make_delivery(start))
    sa_session.commit()

    # When it is moved to the target
    changed = deliveries.transition_status(sa_session, delivery, target)  # type: ignore[arg-type]

    # Then the move happened, the caller's object shows it, and another session sees it
    assert changed is True
    assert delivery.status == target
    assert deliveries.get_delivery(new_session(), delivery.id).status == target


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("pending", "succeeded"),
        ("pending", "failed"),
        ("succeeded", "dispatched"),
        ("failed", "cancelled"),  # only exhaust_delivery may do this
        ("dispatched", "cancelled"),  # only record_attempt may do this
        ("failed", "succeeded"),
        ("cancelled", "pending"),
        ("suppressed", "dispatched"),
    ],
)
def test_transition_outside_the_table_is_rejected_and_writes_nothing(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory, start: str, target: str
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery(start))

    with pytest.raises(InvalidTransition) as raised:
        deliveries.transition_status(sa_session, delivery, target)  # type: ignore[arg-type]

    assert (raised.value.from_status, raised.value.to_status) == (start, target)
    assert f"from {start!r} to {target!r}" in str(raised.value)
    assert deliveries.get_delivery(new_session(), delivery.id).status == start


def test_transition_to_the_same_status_is_accepted_without_a_write(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery("dispatched"))
    written_at = delivery.updated_at
    sa_session.commit()

    changed = deliveries.transition_status(sa_session, delivery, "dispatched")

    assert changed is False
    assert delivery.status == "dispatched"
    assert deliveries.get_delivery(sa_session, delivery.id).updated_at == written_at


def test_transition_to_an_unknown_status_names_the_valid_ones(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())

    with pytest.raises(InvalidValue, match=r"status must be one of 'pending', .*got 'archived'"):
        deliveries.transition_status(sa_session, delivery, "archived")  # type: ignore[arg-type]


def test_only_a_digest_flush_marks_a_delivery_digested(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())

    with pytest.raises(InvalidTransition, match="can't go from 'pending' to 'digested'"):
        deliveries.transition_status(sa_session, delivery, "digested")


def test_transition_from_a_stale_view_loses_the_compare_and_set_and_shows_the_winner(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Given a caller that read the delivery while it was pending
    delivery = deliveries.get_delivery(sa_session, make_delivery())
    sa_session.expunge(delivery)  # keep the stale view: no reload from the database
    sa_session.commit()
    # and another worker that dispatched it since
    other = new_session()
    deliveries.transition_status(other, deliveries.get_delivery(other, delivery.id), "dispatched")
    other.commit()

    # When the caller moves its stale pending view to cancelled
    sa_session.add(delivery)
    changed = deliveries.transition_status(sa_session, delivery, "cancelled")

    # Then the update matched no row: nothing was written, and the caller sees the winner
    assert changed is False
    assert delivery.status == "dispatched"
    assert deliveries.get_delivery(new_session(), delivery.id).status == "dispatched"


def test_only_one_of_many_concurrent_dispatches_wins(
    make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery()
    sessions = [new_session() for _ in range(5)]
    views = [deliveries.get_delivery(s, delivery_id) for s in sessions]
    for s in sessions:
        s.commit()
    start = threading.Barrier(len(sessions))
    results: list[bool] = []

    def dispatch(index: int) -> None:
        start.wait()
        results.append(deliveries.transition_status(sessions[index], views[index], "dispatched"))

    threads = [threading.Thread(target=dispatch, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False, False, False, False, True]


def test_suppressing_a_pending_delivery_ends_it_with_reason_and_checkpoint(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())
    sa_session.commit()

    changed = deliveries.suppress_delivery(sa_session, delivery, "channel_disabled", checkpoint="perform")

    stored = deliveries.get_delivery(new_session(), delivery.id)
    assert changed is True
    assert (stored.status, stored.suppression_reason) == ("suppressed", "channel_disabled")
    assert stored.metadata_["policy_checkpoint"] == "perform"
    assert stored.metadata_["correlation_id"] == "req-1"  # earlier metadata is kept
    assert stored.status in deliveries.terminal_states()


def test_suppressing_twice_writes_once(sa_session: Session, make_delivery: MakeDelivery) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())
    assert deliveries.suppress_delivery(sa_session, delivery, "channel_disabled") is True

    assert deliveries.suppress_delivery(sa_session, delivery, "category_disabled") is False
    assert delivery.suppression_reason == "channel_disabled"


@pytest.mark.parametrize("ended", ["succeeded", "cancelled"])
def test_suppressing_an_ended_delivery_is_rejected(
    sa_session: Session, make_delivery: MakeDelivery, ended: str
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery(ended))

    with pytest.raises(InvalidTransition, match=f"{ended!r} is final"):
        deliveries.suppress_delivery(sa_session, delivery, "channel_disabled")


def test_suppressing_refuses_an_unknown_checkpoint(sa_session: Session, make_delivery: MakeDelivery) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())

    with pytest.raises(InvalidValue, match="checkpoint must be one of 'planning', 'perform', got 'send'"):
        deliveries.suppress_delivery(sa_session, delivery, "channel_disabled", checkpoint="send")  # type: ignore[arg-type]


def test_cancelling_a_pending_delivery_by_hand_leaves_no_reason_and_ends_it(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery = deliveries.get_delivery(sa_session, make_delivery())

    deliveries.transition_status(sa_session, delivery, "cancelled")
    sa_session.commit()

    stored = deliveries.get_delivery(new_session(), delivery.id)
    assert (stored.status, stored.suppression_reason) == ("cancelled", None)
    assert stored.status in deliveries.terminal_states()


def test_a_change_inside_a_caller_transaction_is_a_savepoint_the_caller_commits(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Given a caller with its own transaction open
    delivery_id = make_delivery()
    sa_session.begin()
    delivery = deliveries.get_delivery(sa_session, delivery_id)

    # When the state machine changes the delivery, and a rejected change fails after it
    deliveries.transition_status(sa_session, delivery, "dispatched")
    with pytest.raises(InvalidTransition):
        deliveries.transition_status(sa_session, delivery, "cancelled")

    # Then nothing is visible until the caller commits, and the failure did not undo the change
    assert deliveries.get_delivery(new_session(), delivery_id).status == "pending"
    sa_session.commit()
    assert deliveries.get_delivery(new_session(), delivery_id).status == "dispatched"


def test_get_delivery_names_a_missing_id_and_fetch_delivery_returns_none(sa_session: Session) -> None:
    missing = "00000000-0000-0000-0000-000000000001"

    assert deliveries.fetch_delivery(sa_session, missing) is None
    with pytest.raises(LookupError, match=missing):
        deliveries.get_delivery(sa_session, missing)
    with pytest.raises(InvalidValue, match="delivery_id must be a UUID, got 'nope'"):
        deliveries.get_delivery(sa_session, "nope")


def test_a_delivery_from_another_session_is_refused_rather_than_left_stale(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    foreign = deliveries.get_delivery(new_session(), make_delivery())

    with pytest.raises(InvalidValue, match="delivery must be a row loaded in this session"):
        deliveries.transition_status(sa_session, foreign, "dispatched")
    assert deliveries.get_delivery(sa_session, foreign.id).status == "pending"
