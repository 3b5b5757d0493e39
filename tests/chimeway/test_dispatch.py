"""The dispatch worker's contract (the seed): terminal short-circuit, convergence, exhaustion."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway import dispatch
from chimeway.adapters import Delivered, Failed, TestAdapter
from chimeway.dispatch import ChannelRoute, Dispatcher, DispatchWorker, UnhandledOutcomeError, enqueue_in
from chimeway.models import Delivery, DeliveryAttempt
from pgqueue.testing import drain_queue, perform_job

from .conftest import MakeDelivery, MakeNotification, SessionFactory


@pytest.fixture
def dispatcher(sa_engine: Engine, dsn: str, schema: str, test_adapter: TestAdapter) -> Iterator[Dispatcher]:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    configured = Dispatcher(
        dsn,
        schema=schema,
        routes={
            "in_app": ChannelRoute(test_adapter),
            "sms_custom": ChannelRoute(test_adapter, {"from": "+100"}),
        },
        default=ChannelRoute(test_adapter),
        session_factory=lambda: Session(engine, expire_on_commit=False),
    )
    dispatch.configure(configured)
    yield configured
    dispatch.configure(None)


def state(
    new_session: SessionFactory, delivery_id: uuid.UUID
) -> tuple[str, str | None, list[tuple[int, str, str | None]]]:
    with new_session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        attempts = session.execute(
            select(DeliveryAttempt.attempt_number, DeliveryAttempt.outcome, DeliveryAttempt.error_class)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
        ).all()
        return delivery.status, delivery.suppression_reason, [tuple(a) for a in attempts]  # type: ignore[misc]


def run(delivery_id: uuid.UUID, attempt: int = 1) -> Any:
    return perform_job(DispatchWorker, {"delivery_id": str(delivery_id)}, attempt=attempt)


pytestmark = pytest.mark.usefixtures("dispatcher")


def test_a_healthy_adapter_delivers_once(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    assert run(delivery_id) is None
    assert state(new_session, delivery_id) == ("succeeded", None, [(1, "succeeded", None)])
    assert len(test_adapter.calls()) == 1


def test_performing_twice_records_one_attempt(
    make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery()
    run(delivery_id)
    run(delivery_id)
    assert len(state(new_session, delivery_id)[2]) == 1


@pytest.mark.parametrize("status", ["succeeded", "suppressed", "cancelled"])
def test_ended_deliveries_short_circuit(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter, status: str
) -> None:
    delivery_id = make_delivery(status)
    assert run(delivery_id) is None
    assert test_adapter.calls() == []
    assert state(new_session, delivery_id)[2] == []


def test_a_temporary_failure_with_attempts_left_is_retried(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(Failed("temporary", {"status_code": 503}))
    result = run(delivery_id, attempt=1)
    assert isinstance(result, pgqueue.Error)
    assert "adapter_temporary" in str(result)
    assert state(new_session, delivery_id) == ("failed", None, [(1, "failed", "temporary")])
    test_adapter.script(Delivered({}))
    assert run(delivery_id, attempt=2) is None
    assert state(new_session, delivery_id)[0] == "succeeded"
    assert len(state(new_session, delivery_id)[2]) == 2


def test_temporary_failures_exhaust_on_the_final_attempt(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.set_default(Failed("temporary"))
    for attempt in range(1, 5):
        assert isinstance(run(delivery_id, attempt=attempt), pgqueue.Error)
    assert run(delivery_id, attempt=5) is None
    status, reason, attempts = state(new_session, delivery_id)
    assert (status, reason) == ("cancelled", "retries_exhausted")
    assert attempts == [(n, "failed", "temporary") for n in range(1, 6)]


def test_the_final_attempt_and_its_exhaustion_commit_together(
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run that dies between recording the final attempt and exhausting the delivery (here: the
    # statement that writes both fails) must leave neither, so its rerun records the fifth
    # attempt, not a sixth.
    delivery_id = make_delivery()
    test_adapter.set_default(Failed("temporary"))
    for attempt in range(1, 5):
        run(delivery_id, attempt=attempt)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("worker died here")

    with monkeypatch.context() as patched:
        patched.setattr(dispatch.records, "_run_record", crash)
        with pytest.raises(RuntimeError, match="worker died"):
            run(delivery_id, attempt=5)
    assert len(state(new_session, delivery_id)[2]) == 4, "the fifth attempt was rolled back with it"
    assert run(delivery_id, attempt=6) is None
    status, reason, attempts = state(new_session, delivery_id)
    assert (status, reason) == ("cancelled", "retries_exhausted")
    assert [a[0] for a in attempts] == [1, 2, 3, 4, 5]


def test_a_fresh_delivery_run_as_the_last_attempt_exhausts(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.set_default(Failed("temporary"))
    assert run(delivery_id, attempt=5) is None
    assert state(new_session, delivery_id)[:2] == ("cancelled", "retries_exhausted")


@pytest.mark.parametrize(("kind", "reason"), [("permanent", "permanent_failure"), ("bounced", "bounced")])
def test_permanent_and_bounced_failures_end_the_delivery_without_retry(
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    kind: str,
    reason: str,
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(Failed(kind))  # type: ignore[arg-type]
    assert run(delivery_id) is None
    assert state(new_session, delivery_id)[:2] == ("cancelled", reason)


def test_an_unclassifiable_result_raises_before_the_final_attempt(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(("error", "throttled"))
    with pytest.raises(UnhandledOutcomeError):
        run(delivery_id, attempt=1)
    assert state(new_session, delivery_id) == ("failed", None, [(1, "rejected", "unknown_classification")])


def test_an_unclassifiable_result_on_the_final_attempt_exhausts(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(("error", "throttled"))
    assert run(delivery_id, attempt=5) is None
    assert state(new_session, delivery_id) == (
        "cancelled",
        "retries_exhausted",
        [(1, "rejected", "unknown_classification")],
    )


def test_an_adapter_that_raises_is_a_temporary_failure(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(ConnectionResetError("peer reset"))
    assert isinstance(run(delivery_id), pgqueue.Error)
    assert state(new_session, delivery_id)[2] == [(1, "failed", "temporary")]


def test_a_read_fallback_delivery_is_suppressed_without_sending(
    make_notification: MakeNotification, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    from chimeway import deliveries

    notification_id = make_notification(read=True)
    with new_session() as session:
        delivery_id = deliveries.plan_delivery(session, notification_id, "email", delay_fallback=True).id
        session.commit()
    assert run(delivery_id) is None
    assert state(new_session, delivery_id) == ("suppressed", "already_read", [])
    with new_session() as session:
        assert session.get(Delivery, delivery_id).metadata_["policy_checkpoint"] == "perform"  # type: ignore[union-attr]
    assert test_adapter.calls() == []


def test_the_channels_adapter_config_reaches_the_adapter(
    make_delivery: MakeDelivery, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery(channel="sms_custom")
    run(delivery_id)
    (call,) = test_adapter.calls()
    assert call.config == {"from": "+100"}
    assert call.delivery.idempotency_key == f"{delivery_id}:1"


def test_ten_concurrent_jobs_for_a_cancelled_delivery_never_call_the_adapter(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery("cancelled")
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(run(delivery_id))) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [None] * 10
    assert test_adapter.calls() == []
    assert state(new_session, delivery_id)[2] == []


@pytest.mark.parametrize("bad", ["not-a-uuid", 42, None])
def test_a_malformed_delivery_id_cancels_the_job(bad: Any) -> None:
    result = perform_job(DispatchWorker, {"delivery_id": bad})
    assert isinstance(result, pgqueue.Cancel)
    assert "malformed delivery_id" in str(result)


def test_a_missing_delivery_cancels_the_job() -> None:
    missing = uuid.uuid4()
    result = perform_job(DispatchWorker, {"delivery_id": str(missing)})
    assert isinstance(result, pgqueue.Cancel)
    assert f"delivery {missing} not found" in str(result)


def test_enqueue_in_joins_the_sessions_transaction(
    make_delivery: MakeDelivery, new_session: SessionFactory, dsn: str, schema: str
) -> None:
    delivery_id = make_delivery()
    with new_session() as session:
        job = enqueue_in(session, delivery_id, schema=schema)
        assert job.args == {"delivery_id": str(delivery_id)}
        session.rollback()
        assert pgqueue.all_jobs(session, schema=schema) == []
        enqueue_in(session, delivery_id, schema=schema)
        again = enqueue_in(session, delivery_id, schema=schema)
        assert again.conflict, "one dispatch job per delivery within 60 s"
        session.commit()
        assert len(pgqueue.all_jobs(session, schema=schema)) == 1


def test_an_always_failing_adapter_drained_with_retries_exhausts_after_five_attempts(
    make_delivery: MakeDelivery, new_session: SessionFactory, test_adapter: TestAdapter, dsn: str, schema: str
) -> None:
    delivery_id = make_delivery()
    test_adapter.set_default(Failed("temporary"))
    with new_session() as session:
        job = enqueue_in(session, delivery_id, schema=schema)
        session.commit()

    drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True, with_recursion=True)

    assert state(new_session, delivery_id)[:2] == ("cancelled", "retries_exhausted")
    assert len(state(new_session, delivery_id)[2]) == 5
    with new_session() as session:
        final = pgqueue.get_job(session, job.id, schema=schema)
        count = session.scalar(select(func.count()).select_from(DeliveryAttempt))
    assert final is not None
    assert (final.state, final.attempt) == ("completed", 5), "completed, not discarded"
    assert count == 5


def test_sync_dispatch_of_a_delivered_notification_is_not_repeated(
    dispatcher: Dispatcher, make_delivery: MakeDelivery, test_adapter: TestAdapter
) -> None:
    delivery_id = make_delivery()
    assert dispatcher.deliver_now(delivery_id).status == "succeeded"
    assert dispatcher.deliver_now(delivery_id).status == "succeeded"
    assert len(test_adapter.calls()) == 1


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Failed("permanent"), ("cancelled", "permanent_failure")),
        (Failed("bounced"), ("cancelled", "bounced")),
        (Failed("temporary"), ("failed", None)),
    ],
)
def test_sync_dispatch_converges_like_the_worker_but_never_retries(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    test_adapter: TestAdapter,
    result: Failed,
    expected: tuple[str, str | None],
) -> None:
    delivery_id = make_delivery()
    test_adapter.script(result)
    delivery = dispatcher.deliver_now(delivery_id)
    assert (delivery.status, delivery.suppression_reason) == expected
