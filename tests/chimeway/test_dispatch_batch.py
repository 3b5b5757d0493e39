"""The batched dispatch path gives each delivery exactly what the one-at-a-time contract gives.

The reference is the contract written with :mod:`chimeway.deliveries` one delivery at a time (as
the dispatch worker did before it batched): load, short-circuit, mark dispatched, call, record the
attempt, exhaust on the final attempt, map the result. Every adapter outcome at every attempt
position runs through both, on twin deliveries, and the rows, the explanation and the job's result
must match.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import select

import pgqueue
from chimeway import deliveries
from chimeway.adapters import Delivered, Failed, TestAdapter, classify
from chimeway.dispatch import ChannelRoute, Dispatcher, DispatchWorker, UnhandledOutcomeError
from chimeway.dispatch.contract import DELIVERY_ATTEMPTS, job_result
from chimeway.errors import InvalidTransition
from chimeway.models import Delivery, DeliveryAttempt
from pgqueue.testing import build_job, perform_job

from ..helpers import AsyncCountingCursor
from .conftest import MakeDelivery, SessionFactory

OUTCOMES: dict[str, object] = {
    "delivered": Delivered({"provider_message_id": "m-1", "queued": True}),
    "temporary": Failed("temporary", {"status_code": 503}),
    "permanent": Failed("permanent", {"status_code": 400}),
    "bounced": Failed("bounced", {"status_code": 410}),
    "garbage": ("error", "throttled"),
    "raises": ConnectionResetError("peer reset"),
}


def reference(
    session_factory: SessionFactory, adapter: TestAdapter, delivery_id: uuid.UUID, attempt: int
) -> Any:
    """The one-at-a-time contract, step by step through chimeway.deliveries."""
    with session_factory() as session:
        delivery = deliveries.get_delivery(session, delivery_id)
        if delivery.status in deliveries.terminal_states():
            return None
        deliveries.transition_status(session, delivery, "dispatched")
        context = deliveries.delivery_context(session, delivery_id)
        session.commit()
    try:
        result = adapter.deliver(context, {})
    except Exception as exc:
        result = Failed("temporary", {"exception": type(exc).__name__})
    with session_factory() as session:
        session.begin()
        outcome = deliveries.AttemptOutcome(*classify(result), adapter=adapter.name)
        recorded = deliveries.record_attempt(session, delivery_id, outcome)
        final = attempt >= DELIVERY_ATTEMPTS
        exhausted = False
        if recorded.delivery.status == "failed" and final:
            exhausted = deliveries.exhaust_delivery(session, recorded.delivery)
        try:
            value = job_result(
                delivery_id,
                outcome.outcome,
                outcome.error_class,
                recorded.attempt.provider_response,
                exhausted,
                attempt,
                DELIVERY_ATTEMPTS,
            )
        except UnhandledOutcomeError as exc:
            value = exc
        session.commit()
    return value


def story(session_factory: SessionFactory, delivery_id: uuid.UUID) -> tuple[Any, ...]:
    """Everything the rows say about a delivery, without its ids and timestamps."""
    with session_factory() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        attempts = session.execute(
            select(
                DeliveryAttempt.attempt_number,
                DeliveryAttempt.outcome,
                DeliveryAttempt.error_class,
                DeliveryAttempt.provider_response,
                DeliveryAttempt.provider_message_id,
                DeliveryAttempt.adapter,
            )
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
        ).all()
        explanation = deliveries.explain_delivery(session, delivery_id)
        timeline = [(entry.event, entry.detail) for entry in explanation.timeline]
        checkpoint = (delivery.metadata_ or {}).get("policy_checkpoint")
        return (
            delivery.status,
            delivery.suppression_reason,
            checkpoint,
            [tuple(a) for a in attempts],
            timeline,
        )


def describe(value: Any) -> tuple[str, str]:
    if value is None:
        return ("ok", "")
    return (type(value).__name__, str(value).replace(str(getattr(value, "delivery_id", "")), "<id>"))


def prior_failures(session_factory: SessionFactory, delivery_id: uuid.UUID, count: int) -> None:
    """Bring a delivery to ``count`` recorded temporary failures, as earlier runs would."""
    failure = deliveries.AttemptOutcome("failed", "temporary", {"status_code": 503}, adapter="test")
    for _ in range(count):
        with session_factory() as session:
            deliveries.transition_status(session, deliveries.get_delivery(session, delivery_id), "dispatched")
            deliveries.record_attempt(session, delivery_id, failure)
            session.commit()


@pytest.mark.parametrize("attempt", [1, 3, 5])
@pytest.mark.parametrize("kind", list(OUTCOMES))
def test_the_batch_path_ends_each_outcome_where_the_one_at_a_time_contract_does(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    kind: str,
    attempt: int,
) -> None:
    batched, one_by_one = make_delivery(), make_delivery()
    for delivery_id in (batched, one_by_one):
        prior_failures(new_session, delivery_id, attempt - 1)

    test_adapter.script(OUTCOMES[kind], delivery_id=one_by_one)
    expected = describe(reference(new_session, test_adapter, one_by_one, attempt))
    test_adapter.script(OUTCOMES[kind], delivery_id=batched)
    try:
        got = describe(perform_job(DispatchWorker, {"delivery_id": str(batched)}, attempt=attempt))
    except UnhandledOutcomeError as exc:
        got = describe(exc)

    assert got == expected
    assert story(new_session, batched) == story(new_session, one_by_one)
    (call,) = [c for c in test_adapter.calls() if c.delivery.delivery_id == batched]
    assert call.delivery.idempotency_key == f"{batched}:{attempt}"


@pytest.mark.parametrize("status", ["succeeded", "suppressed", "cancelled"])
def test_an_ended_delivery_records_nothing_on_either_path(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    status: str,
) -> None:
    delivery_id = make_delivery(status)
    before = story(new_session, delivery_id)

    assert perform_job(DispatchWorker, {"delivery_id": str(delivery_id)}) is None

    assert story(new_session, delivery_id) == before
    assert test_adapter.calls() == []


def test_an_attempt_the_delivery_can_no_longer_take_is_refused_as_the_contract_refuses_it(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    # While the adapter runs, someone else ends the delivery: recording a success on it would
    # go pending → succeeded; record_attempt refuses that, and so does the batch.
    delivery_id = make_delivery()

    class Meanwhile(TestAdapter):
        def deliver(self, delivery: Any, config: Any) -> Any:
            with new_session() as session:
                row = deliveries.get_delivery(session, delivery_id)
                row.status = "pending"  # an operator reset it by hand
                session.commit()
            return Delivered({})

    dispatcher.default = ChannelRoute(Meanwhile())
    dispatcher._default = dispatcher._prepare(dispatcher.default)

    with pytest.raises(InvalidTransition, match="from 'pending' to 'succeeded'"):
        perform_job(DispatchWorker, {"delivery_id": str(delivery_id)})

    status, _reason, _checkpoint, attempts, _timeline = story(new_session, delivery_id)
    assert (status, attempts) == ("pending", [])


# -- many deliveries, one batch --------------------------------------------------------------------


@pytest.fixture
async def counted_pool(dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "cursor_factory": AsyncCountingCursor},
    )
    await pool.open()
    yield pool
    await pool.close()


def jobs_for(ids: list[str], attempt: int = 1) -> list[pgqueue.Job]:
    return [
        build_job(DispatchWorker, DispatchWorker.new({"delivery_id": delivery_id}), attempt=attempt)
        for delivery_id in ids
    ]


class Instant:
    """An async adapter that answers at once (as the logger adapter does)."""

    name = "instant"

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def deliver(self, delivery: Any, config: Any) -> Delivered:
        self.keys.append(delivery.idempotency_key)
        return Delivered({"provider_message_id": f"m-{delivery.delivery_id}"})


@pytest.mark.anyio
async def test_a_hundred_jobs_started_together_cost_two_statements(
    counted_pool: AsyncConnectionPool[Any],
    schema: str,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
) -> None:
    ids = [str(make_delivery()) for _ in range(100)]
    adapter = Instant()
    dispatcher = Dispatcher(pool=counted_pool, schema=schema, default=ChannelRoute(adapter))
    AsyncCountingCursor.reset()

    async with dispatcher:
        results = await asyncio.gather(*(dispatcher.perform(job) for job in jobs_for(ids)))

    assert results == [None] * 100
    assert AsyncCountingCursor.statements() == 2, "one claim and one record for the whole batch"
    assert sorted(adapter.keys) == sorted(f"{delivery_id}:1" for delivery_id in ids)
    for delivery_id in ids:
        status, _reason, _checkpoint, attempts, _timeline = story(new_session, uuid.UUID(delivery_id))
        assert (status, [a[:5] for a in attempts]) == (
            "succeeded",
            [(1, "succeeded", None, {"provider_message_id": f"m-{delivery_id}"}, f"m-{delivery_id}")],
        )
