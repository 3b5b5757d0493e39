"""Recovery: deliveries stuck in ``dispatched`` whose job is gone or finished are re-driven."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import update
from sqlalchemy.engine import Engine

import pgqueue
from chimeway import deliveries, dispatch
from chimeway.adapters import TestAdapter, resolve_adapter
from chimeway.dispatch import ChannelRoute, Dispatcher
from chimeway.models import Delivery
from chimeway.recovery import Recovery
from chimeway.testing import ScriptedWebhookServer
from pgqueue.errors import ConfigError
from pgqueue.notifier import LocalNotifier
from pgqueue.plugins import PluginContext
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.testing import drain_queue

from ..helpers import wait_until
from .conftest import MakeDelivery, SessionFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(dsn: str, schema: str) -> AsyncIterator[PluginContext]:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        yield PluginContext(pool, dsn, schema, "node-a", LocalNotifier(), lambda: True, lambda queue: None)


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


def plugin_round(dsn: str, schema: str, plugin: Any) -> Any:
    """One round of a leader-only plugin, as this node's runtime would run it."""

    async def one_round() -> Any:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            context = PluginContext(
                pool, dsn, schema, "node-b", LocalNotifier(), lambda: True, lambda q: None
            )
            return await plugin.run_once(context)

    return anyio.run(one_round)


@pytest.mark.system
@pytest.mark.slow
def test_a_delivery_stranded_by_a_worker_killed_on_its_last_run_is_recovered(
    sa_engine: Engine,
    dsn: str,
    schema: str,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    tmp_path: Path,
) -> None:
    delivery_id = make_delivery(channel="webhook")
    job = enqueue(new_session, delivery_id, schema)
    # Its job is on its last run: every earlier run's worker died too.
    set_job(dsn, schema, job.id, "attempt = max_attempts - 1")
    with ScriptedWebhookServer(delay=30.0) as receiver:  # the receiver hangs: the send is under way
        config = tmp_path / "chimeway.toml"
        config.write_text(
            f'schema = "{schema}"\nshutdown_grace = 1\n'
            f'[channels.webhook]\nadapter = "webhook"\nconfig = {{ url = "{receiver.url}", timeout = 60 }}\n'
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "chimeway.worker", "--config", str(config)],
            env={**os.environ, "DATABASE_URL": dsn},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: read(new_session, delivery_id).status == "dispatched", timeout=60)
        finally:
            worker.kill()  # SIGKILL mid-send: no attempt recorded, the job left executing
            worker.wait(10)

        # The lifeline finds the job orphaned and, out of runs, discards it: the delivery is stuck.
        def discarded() -> bool:
            plugin_round(dsn, schema, Lifeline(rescue_window=1.0))
            return [j.state for j in all_jobs(dsn, schema)] == ["discarded"]

        wait_until(discarded, timeout=60, interval=0.5)
        assert read(new_session, delivery_id).status == "dispatched"

        assert plugin_round(dsn, schema, Recovery(stuck_after=0.001)) == {
            "recovered_count": 1,
            "job_missing": 0,
            "job_finished": 1,
        }
        receiver.delay = 0.0
        route = ChannelRoute(resolve_adapter("webhook"), {"url": receiver.url, "timeout": 10})
        dispatch.configure(Dispatcher(dsn, schema=schema, routes={"webhook": route}))
        try:
            drained = drain_queue(dsn, dispatch.QUEUE, schema=schema)
        finally:
            dispatch.configure(None)

    assert drained.success == 1
    done = read(new_session, delivery_id)
    assert done.status == "succeeded"
    assert done.metadata_["recovery_reason"] == "job_finished"
    with new_session() as session:
        explanation = deliveries.explain_delivery(session, delivery_id)
    assert [a.number for a in explanation.attempts] == [1]
    assert "recovered" in [e.event for e in explanation.timeline]
    # the re-drive sent under the idempotency key of the send the kill interrupted
    keys = {r.idempotency_key for r in receiver.requests}
    assert keys == {f"{delivery_id}:1"}
