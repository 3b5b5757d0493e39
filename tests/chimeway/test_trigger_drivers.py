"""``trigger`` and ``enqueue_in`` through SQLAlchemy on psycopg2 and on asyncpg.

The same fan-out as on psycopg (COPY on each driver), in the caller's transaction: committed
it is all there, rolled back none of it; a notifier failing mid-COPY, or content the database
refuses, leaves the caller's transaction usable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway.dispatch import aenqueue_in, enqueue_in
from chimeway.models import Delivery, Event, Notification
from chimeway.trigger import PlanningFailed, TriggerError, atrigger, trigger

from ..pgqueue.test_drivers import url_for
from .test_trigger import LINE_OF_1500, Scripted


def failing_at_1500(i: int) -> dict[str, Any]:
    if i == 1500:
        raise LookupError("template missing")
    return {"ok": i}


def lone_surrogate_at_1500(i: int) -> dict[str, Any]:
    return {"half": "\ud800"} if i == 1500 else {"ok": i}


@pytest.fixture
def pg2_engine(sqlalchemy_url: str, schema: str) -> Iterator[Engine]:
    engine = create_engine(url_for(sqlalchemy_url, "psycopg2"))
    yield engine.execution_options(schema_translate_map={None: schema})
    engine.dispose()


@pytest.fixture
async def apg_engine(sqlalchemy_url: str, schema: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url_for(sqlalchemy_url, "asyncpg"))
    yield engine.execution_options(schema_translate_map={None: schema})
    await engine.dispose()


def counts(session: Session, schema: str) -> tuple[int, int, int, int]:
    def n(model: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    return n(Event), n(Notification), n(Delivery), len(pgqueue.all_jobs(session, schema=schema, limit=10_000))


def test_trigger_on_psycopg2_commits_or_rolls_back_everything(pg2_engine: Engine, schema: str) -> None:
    with Session(pg2_engine) as session:
        trigger(
            session,
            Scripted(count=300, channels=["email", "sms"]),
            {},
            idempotency_key="r",
            queue_schema=schema,
        )
        session.rollback()
        assert counts(session, schema) == (0, 0, 0, 0)
        result = trigger(
            session,
            Scripted(count=300, channels=["email", "sms"]),
            {},
            idempotency_key="c",
            queue_schema=schema,
        )
        session.commit()
        assert counts(session, schema) == (1, 300, 600, 600)
        assert len(result.delivery_ids) == 600


def test_trigger_on_psycopg2_keeps_the_transaction_usable_after_a_failure(
    pg2_engine: Engine, schema: str
) -> None:
    with Session(pg2_engine) as session:
        with pytest.raises(PlanningFailed, match="build: LookupError: template missing"):
            trigger(
                session,
                Scripted(count=2000, content=failing_at_1500),
                {},
                idempotency_key="f",
                queue_schema=schema,
            )
        assert counts(session, schema)[:3] == (1, 0, 0)
        session.rollback()
        with pytest.raises(TriggerError, match=f"content the database refuses .* line {LINE_OF_1500}"):
            trigger(
                session,
                Scripted(count=2000, content=lone_surrogate_at_1500),
                {},
                idempotency_key="s",
                queue_schema=schema,
            )
        assert counts(session, schema)[:3] == (1, 0, 0)


def test_enqueue_in_on_psycopg2_joins_the_session(pg2_engine: Engine, schema: str) -> None:
    delivery_id = uuid.uuid4()
    with Session(pg2_engine) as session:
        enqueue_in(session, delivery_id, schema=schema)
        session.rollback()
        assert counts(session, schema)[3] == 0
        job = enqueue_in(session, delivery_id, schema=schema)
        session.commit()
        assert [j.id for j in pgqueue.all_jobs(session, schema=schema)] == [job.id]
        assert job.args == {"delivery_id": str(delivery_id)}


@pytest.mark.anyio
async def test_atrigger_on_asyncpg_commits_or_rolls_back_everything(
    apg_engine: AsyncEngine, schema: str
) -> None:
    async with AsyncSession(apg_engine) as session:
        notifier = Scripted(count=300, channels=["email", "sms"])
        await atrigger(session, notifier, {}, idempotency_key="r", queue_schema=schema)
        await session.rollback()
        assert await session.run_sync(counts, schema) == (0, 0, 0, 0)
        await atrigger(session, notifier, {}, idempotency_key="c", queue_schema=schema)
        await session.commit()
        assert await session.run_sync(counts, schema) == (1, 300, 600, 600)


@pytest.mark.anyio
async def test_trigger_in_run_sync_on_asyncpg(apg_engine: AsyncEngine, schema: str) -> None:
    def fan_out(session: Session) -> None:
        trigger(session, Scripted(count=250), {}, idempotency_key="k", queue_schema=schema)

    async with AsyncSession(apg_engine) as session:
        await session.run_sync(fan_out)
        await session.commit()
        assert await session.run_sync(counts, schema) == (1, 250, 250, 250)


@pytest.mark.anyio
async def test_atrigger_on_asyncpg_keeps_the_transaction_usable_after_a_failure(
    apg_engine: AsyncEngine, schema: str
) -> None:
    async with AsyncSession(apg_engine) as session:
        with pytest.raises(PlanningFailed, match="build: LookupError: template missing"):
            await atrigger(
                session,
                Scripted(count=2000, content=failing_at_1500),
                {},
                idempotency_key="f",
                queue_schema=schema,
            )
        assert (await session.run_sync(counts, schema))[:3] == (1, 0, 0)
        await session.rollback()
        with pytest.raises(TriggerError, match=f"content the database refuses .* line {LINE_OF_1500}"):
            await atrigger(
                session,
                Scripted(count=2000, content=lone_surrogate_at_1500),
                {},
                idempotency_key="s",
                queue_schema=schema,
            )
        assert (await session.run_sync(counts, schema))[:3] == (1, 0, 0)


@pytest.mark.anyio
async def test_aenqueue_in_on_asyncpg_joins_the_session(apg_engine: AsyncEngine, schema: str) -> None:
    delivery_id = uuid.uuid4()
    async with AsyncSession(apg_engine) as session:
        await aenqueue_in(session, delivery_id, schema=schema)
        await session.rollback()
        job = await aenqueue_in(session, delivery_id, schema=schema)
        await session.commit()
        jobs = await session.run_sync(lambda s: pgqueue.all_jobs(s, schema=schema))
    assert [j.id for j in jobs] == [job.id]
