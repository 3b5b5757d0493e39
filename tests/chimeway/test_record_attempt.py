"""record_attempt: row lock, contiguous numbering, outcome → status (behaviours 12 to 18)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.adapters import Delivered, TestAdapter, classify
from chimeway.deliveries import AttemptOutcome
from chimeway.errors import DeliveryNotFound, InvalidTransition, InvalidValue
from chimeway.models import Delivery, DeliveryAttempt
from tests.helpers import wait_until

from .conftest import BOUNCED, PERMANENT, SUCCEEDED, TEMPORARY, MakeDelivery, SessionFactory, TelemetryEvent


def attempts_of(session: Session, delivery_id: uuid.UUID) -> list[DeliveryAttempt]:
    return list(
        session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
        )
    )


def test_first_attempt_is_number_one_and_each_retry_takes_the_next(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    # Given a dispatched delivery
    delivery = deliveries.get_delivery(sa_session, make_delivery("dispatched"))

    # When three dispatch + temporary failure cycles are recorded
    numbers = []
    for _ in range(3):
        deliveries.transition_status(sa_session, delivery, "dispatched")
        numbers.append(deliveries.record_attempt(sa_session, delivery.id, TEMPORARY).attempt.attempt_number)

    # Then the attempts are numbered 1, 2, 3 and the delivery waits for a retry
    assert numbers == [1, 2, 3]
    assert [a.attempt_number for a in attempts_of(sa_session, delivery.id)] == [1, 2, 3]
    assert delivery.status == "failed"


@pytest.mark.parametrize(
    ("outcome", "error_class", "status", "reason"),
    [
        (SUCCEEDED, None, "succeeded", None),
        (TEMPORARY, "temporary", "failed", None),
        (PERMANENT, "permanent", "cancelled", "permanent_failure"),
        (BOUNCED, "bounced", "cancelled", "bounced"),
        (AttemptOutcome("rejected", "unknown_classification"), "unknown_classification", "failed", None),
    ],
    ids=["succeeded", "temporary", "permanent", "bounced", "unknown"],
)
def test_each_outcome_records_its_error_class_and_moves_the_delivery(
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    sa_session: Session,
    outcome: AttemptOutcome,
    error_class: str | None,
    status: str,
    reason: str | None,
) -> None:
    delivery_id = make_delivery("dispatched")

    recorded = deliveries.record_attempt(sa_session, delivery_id, outcome)

    reader = new_session()
    stored = deliveries.get_delivery(reader, delivery_id)
    (attempt,) = attempts_of(reader, delivery_id)
    assert (attempt.outcome, attempt.error_class) == (outcome.outcome, error_class)
    assert (stored.status, stored.suppression_reason) == (status, reason)
    assert recorded.delivery.status == status
    if reason is not None:
        assert stored.metadata_["policy_checkpoint"] == "perform"


def test_an_unknown_error_class_is_invalid_and_the_database_refuses_it_too(
    make_delivery: MakeDelivery, sa_session: Session
) -> None:
    assert deliveries.error_classes() == ("temporary", "permanent", "bounced", "unknown_classification")
    with pytest.raises(InvalidValue, match=r"error_class must be one of .*got 'unknown_class'"):
        AttemptOutcome("failed", "unknown_class")  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="error_class for outcome 'succeeded' must be one of None"):
        AttemptOutcome("succeeded", "permanent")

    delivery_id = make_delivery("dispatched")
    sa_session.add(
        DeliveryAttempt(
            delivery_id=delivery_id, attempt_number=1, outcome="failed", error_class="unknown_class"
        )
    )
    with pytest.raises(IntegrityError, match="chimeway_delivery_attempts_error_class_known"):
        sa_session.flush()


def test_ten_concurrent_recorders_number_their_attempts_exactly_one_to_ten(
    make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Given a dispatched delivery and ten sessions, each on its own connection
    delivery_id = make_delivery("dispatched")
    sessions = [new_session() for _ in range(10)]
    start = threading.Barrier(len(sessions))

    def record(session: Session) -> int:
        start.wait()
        return deliveries.record_attempt(session, delivery_id, TEMPORARY).attempt.attempt_number

    # When all ten record an attempt at the same moment
    with ThreadPoolExecutor(len(sessions)) as pool:
        numbers = list(pool.map(record, sessions))

    # Then the numbers are 1..10, each once, in the calls' results and in the table
    assert sorted(numbers) == list(range(1, 11))
    reader = new_session()
    assert [a.attempt_number for a in attempts_of(reader, delivery_id)] == list(range(1, 11))
    assert deliveries.get_delivery(reader, delivery_id).status == "failed"


def test_a_metadata_key_written_concurrently_survives_a_permanent_failure_recorded_from_a_stale_view(
    dsn: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Given a caller holding a view of the delivery read before anything else happened (its
    # session keeps objects as read across commits)
    caller = new_session(expire_on_commit=False)
    delivery = deliveries.get_delivery(caller, make_delivery("dispatched"))
    delivery_id = delivery.id
    caller.commit()
    # and another transaction that has written a metadata key and still holds the row
    writer = new_session()
    writer.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values({Delivery.metadata_: Delivery.metadata_.op("||")(text("""'{"note": "kept"}'::jsonb"""))})
    )
    writer_pid = writer.scalar(text("SELECT pg_backend_pid()"))

    # When the caller records a permanent failure (it waits for the row lock) and the writer commits
    with ThreadPoolExecutor(1) as pool, psycopg.connect(dsn, autocommit=True) as monitor:
        recording = pool.submit(deliveries.record_attempt, caller, delivery_id, PERMANENT)
        try:
            wait_until(
                lambda: (
                    monitor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                        (writer_pid,),
                    ).fetchone()
                    == (1,)
                ),
                message="record_attempt never waited for the writer's row lock",
            )
            writer.commit()
        finally:
            writer.rollback()  # on failure, release the row so the recorder can finish
        recorded = recording.result(timeout=10)

    # Then the delivery is cancelled for permanent_failure and the concurrent key survived
    stored = deliveries.get_delivery(new_session(), delivery_id)
    assert (stored.status, stored.suppression_reason) == ("cancelled", "permanent_failure")
    assert stored.metadata_["note"] == "kept"
    assert stored.metadata_["policy_checkpoint"] == "perform"
    assert recorded.delivery is delivery  # the caller's own copy, refreshed from the locked row
    assert delivery.metadata_["note"] == "kept"


def test_recording_emits_a_stop_event_with_attempt_number_error_class_and_delivery_id(
    sa_session: Session, make_delivery: MakeDelivery, telemetry_events: list[TelemetryEvent]
) -> None:
    delivery_id = make_delivery("dispatched")

    recorded = deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)

    stops = [e for e in telemetry_events if e[0] == ("chimeway", "attempts", "record", "stop")]
    assert len(stops) == 1
    _, measurements, metadata = stops[0]
    assert metadata["attempt_number"] == 1
    assert metadata["error_class"] == "temporary"
    assert metadata["delivery_id"] == delivery_id
    assert metadata["attempt_id"] == recorded.attempt.id
    assert measurements["duration"] > 0
    assert [e[0][-1] for e in telemetry_events] == ["start", "stop"]


def test_provider_message_id_from_an_adapters_success_is_stored_on_the_attempt(
    sa_session: Session, make_delivery: MakeDelivery, test_adapter: TestAdapter
) -> None:
    # Given an adapter that answers with a provider message id
    delivery_id = make_delivery("dispatched")
    test_adapter.script(Delivered({"provider_message_id": "msg-abc-123", "token": "hunter2"}))
    result = test_adapter.deliver(deliveries.delivery_context(sa_session, delivery_id), {})
    sa_session.commit()

    # When its result is classified and recorded
    recorded = deliveries.record_attempt(
        sa_session, delivery_id, AttemptOutcome(*classify(result), adapter="test")
    )

    # Then the id has its own column, and the stored response has no secret
    (attempt,) = attempts_of(sa_session, delivery_id)
    assert attempt.id == recorded.attempt.id
    assert attempt.provider_message_id == "msg-abc-123"
    assert attempt.provider_response == {"provider_message_id": "msg-abc-123"}
    assert attempt.adapter == "test"


def test_recording_on_a_pending_delivery_is_refused_and_leaves_no_attempt(
    sa_session: Session, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery("pending")

    with pytest.raises(InvalidTransition, match="from 'pending' to 'failed'"):
        deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)

    reader = new_session()
    assert attempts_of(reader, delivery_id) == []
    assert deliveries.get_delivery(reader, delivery_id).status == "pending"


def test_recording_for_a_missing_delivery_names_it(sa_session: Session) -> None:
    missing = uuid.uuid4()

    with pytest.raises(DeliveryNotFound, match=str(missing)):
        deliveries.record_attempt(sa_session, missing, TEMPORARY)


def test_attempts_are_append_only_in_the_database(sa_session: Session, make_delivery: MakeDelivery) -> None:
    delivery_id = make_delivery("dispatched")
    deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)

    with pytest.raises(IntegrityError, match="append-only: attempt 1 of delivery"):
        sa_session.execute(update(DeliveryAttempt).values(outcome="succeeded", error_class=None))


def test_an_ending_attempt_on_a_pending_delivery_is_refused_and_says_why(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery_id = make_delivery("pending")

    with pytest.raises(InvalidTransition, match="can only end a delivery that is dispatched"):
        deliveries.record_attempt(sa_session, delivery_id, PERMANENT)

    assert attempts_of(sa_session, delivery_id) == []
