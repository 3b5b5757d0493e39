"""Recovery: deliveries stuck in ``dispatched`` whose job is gone or finished are re-driven."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries, dispatch
from chimeway.adapters import TestAdapter
from chimeway.dispatch import ChannelRoute, Dispatcher
from chimeway.models import Delivery
from chimeway.recovery import Recovery
from pgqueue.errors import ConfigError
from pgqueue.notifier import LocalNotifier
from pgqueue.plugins import PluginContext
from pgqueue.testing import drain_queue

from .conftest import MakeDelivery, SessionFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(dsn: str, schema: str) -> AsyncIterator[PluginContext]:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        yield PluginContext(pool, dsn, schema, "node-a", LocalNotifier(), lambda: True, lambda queue: None)


@pytest.fixture
def dispatcher(sa_engine: Engine, dsn: str, schema: str, test_adapter: TestAdapter) -> Iterator[Dispatcher]:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    configured = Dispatcher(
        dsn,
        schema=schema,
        default=ChannelRoute(test_adapter),
        session_factory=lambda: Session(engine, expire_on_commit=False),
    )
    dispatch.configure(configured)
    yield configured
    dispatch.configure(None)


def stuck_since(new_session: SessionFactory, delivery_id: uuid.UUID, minutes: float) -> None:
    """The delivery was marked dispatched ``minutes`` ago (its worker then died)."""
    with new_session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(updated_at=Delivery.updated_at - timedelta(minutes=minutes))
        )
        session.commit()


def enqueue(new_session: SessionFactory, delivery_id: uuid.UUID, schema: str) -> pgqueue.Job:
    with new_session() as session:
        job = dispatch.enqueue_in(session, delivery_id, schema=schema)
        session.commit()
    return job


def set_job(dsn: str, schema: str, job_id: int, assignments: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET " + assignments + " WHERE id = %s").format(sql.Identifier(schema, "jobs")),
            (job_id,),
        )


def delete_job(dsn: str, schema: str, job_id: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")), (job_id,)
        )


def all_jobs(dsn: str, schema: str) -> list[pgqueue.Job]:
    with psycopg.connect(dsn) as conn:
        return pgqueue.all_jobs(conn, schema=schema)


def read(new_session: SessionFactory, delivery_id: uuid.UUID) -> Delivery:
    with new_session(expire_on_commit=False) as session:
        return deliveries.get_delivery(session, delivery_id)


async def test_a_delivery_whose_job_was_deleted_is_re_driven_and_ends_under_the_contract(
    ctx: PluginContext,
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    dsn: str,
    schema: str,
) -> None:
    delivery_id = make_delivery("dispatched")  # claimed, then its worker died mid-send
    job = enqueue(new_session, delivery_id, schema)
    delete_job(dsn, schema, job.id)  # and its job was deleted
    stuck_since(new_session, delivery_id, 10)

    assert await Recovery().run_once(ctx) == {"recovered_count": 1, "job_missing": 1, "job_finished": 0}

    recovered = read(new_session, delivery_id)
    assert recovered.status == "dispatched"
    assert recovered.metadata_["recovery_source"] == "recovery_plugin"
    assert recovered.metadata_["recovery_reason"] == "job_missing"
    assert recovered.metadata_["recovered_at"].endswith("Z")
    (new_job,) = [j for j in all_jobs(dsn, schema) if j.args == {"delivery_id": str(delivery_id)}]
    assert (new_job.id, new_job.state) == (recovered.metadata_["recovery_job_id"], "available")
    # Nothing else is stuck now: a second round finds nothing.
    assert (await Recovery().run_once(ctx))["recovered_count"] == 0

    # the queue's worker, in a thread of its own (it runs its own event loop)
    drained = await anyio.to_thread.run_sync(lambda: drain_queue(dsn, dispatch.QUEUE, schema=schema))
    assert drained.success == 1

    done = read(new_session, delivery_id)
    assert done.status == "succeeded"
    (call,) = test_adapter.calls()
    assert call.delivery.idempotency_key == f"{delivery_id}:1"
    with new_session() as session:
        explanation = deliveries.explain_delivery(session, delivery_id)
    assert [e.event for e in explanation.timeline] == [
        "event_created",
        "delivery_planned",
        "recovered",
        "attempt_succeeded",
        "succeeded",
    ]
    assert explanation.timeline[2].detail == {
        "recovery_reason": "job_missing",
        "recovery_source": "recovery_plugin",
    }
    assert explanation.recovery is not None
    assert explanation.recovery["recovery_reason"] == "job_missing"


async def test_a_delivery_whose_job_was_discarded_is_re_driven(
    ctx: PluginContext, make_delivery: MakeDelivery, new_session: SessionFactory, dsn: str, schema: str
) -> None:
    delivery_id = make_delivery("dispatched")
    job = enqueue(new_session, delivery_id, schema)
    # the lifeline discarded it: its worker was killed on every run
    set_job(dsn, schema, job.id, "state = 'discarded', discarded_at = now() - interval '5 minutes'")
    stuck_since(new_session, delivery_id, 10)

    assert await Recovery().run_once(ctx) == {"recovered_count": 1, "job_missing": 0, "job_finished": 1}

    assert read(new_session, delivery_id).metadata_["recovery_reason"] == "job_finished"
    states = sorted(j.state for j in all_jobs(dsn, schema))
    assert states == ["available", "discarded"]


@pytest.mark.parametrize("job_state", ["available", "executing", "retryable", "scheduled"])
async def test_a_delivery_whose_job_is_live_is_left_to_it(
    ctx: PluginContext,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    dsn: str,
    schema: str,
    job_state: str,
) -> None:
    delivery_id = make_delivery("dispatched")
    job = enqueue(new_session, delivery_id, schema)
    set_job(dsn, schema, job.id, f"state = '{job_state}'")
    stuck_since(new_session, delivery_id, 10)

    assert (await Recovery().run_once(ctx))["recovered_count"] == 0

    assert "recovered_at" not in read(new_session, delivery_id).metadata_
    assert len(all_jobs(dsn, schema)) == 1


async def test_a_recent_or_ended_delivery_is_not_stuck(
    ctx: PluginContext, make_delivery: MakeDelivery, new_session: SessionFactory, dsn: str, schema: str
) -> None:
    recent = make_delivery("dispatched")  # dispatched a moment ago: its send may be under way
    ended = make_delivery("succeeded")
    stuck_since(new_session, ended, 10)

    assert await Recovery().run_once(ctx) == {"recovered_count": 0}

    assert all_jobs(dsn, schema) == []
    assert "recovered_at" not in read(new_session, recent).metadata_


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stuck_after": 0}, "stuck_after must be a positive number"),
        ({"interval": -1}, "interval must be a positive number"),
        ({"limit": 0}, "limit must be an integer >= 1"),
        ({"limit": 2.5}, "limit must be an integer >= 1"),
        ({"schema": "100%"}, "schema must not contain a % character"),
    ],
)
def test_recovery_refuses_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Recovery(**options)
