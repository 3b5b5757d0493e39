"""Enqueueing through every driver an application may use: psycopg2, asyncpg, and SQLAlchemy on them.

Each joins the caller's transaction (rolled back: no job), takes both insert paths (the one
statement and, for large batches, COPY) and settles unique jobs; what comes back is what was
stored. Unsupported objects are refused with a TypeError naming what is supported.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.extensions
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.insert import COPY_THRESHOLD

from .test_insert_copy import count_jobs, read_back
from .workers import Ok, UniqueForever

BATCH = COPY_THRESHOLD + 5


def asyncpg_options(dsn: str) -> dict[str, Any]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return {
        "host": info.get("host"),
        "port": int(info["port"]) if info.get("port") else None,
        "user": info.get("user"),
        "password": info.get("password"),
        "database": info.get("dbname"),
    }


def url_for(sqlalchemy_url: str, driver: str) -> str:
    return (
        make_url(sqlalchemy_url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    )


def assert_stored(dsn: str, schema: str, jobs: Sequence[pgqueue.Job]) -> None:
    with psycopg.connect(dsn) as conn:
        stored = read_back(conn, schema, [job.id for job in jobs])
    assert [(j.id, j.worker, j.queue, j.args, j.state, j.scheduled_at) for j in jobs] == [
        (j.id, j.worker, j.queue, j.args, j.state, j.scheduled_at) for j in stored
    ]


@pytest.fixture
def pg2(dsn: str, empty_schema: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(dsn)
    yield conn
    conn.close()


@pytest.fixture
async def apg(dsn: str, empty_schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**asyncpg_options(dsn))
    yield conn
    await conn.close()


@pytest.fixture
def pg2_engine(sqlalchemy_url: str, empty_schema: str) -> Iterator[Engine]:
    engine = create_engine(url_for(sqlalchemy_url, "psycopg2"))
    yield engine
    engine.dispose()


@pytest.fixture
async def apg_engine(sqlalchemy_url: str, empty_schema: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url_for(sqlalchemy_url, "asyncpg"))
    yield engine
    await engine.dispose()


# -- psycopg2 -------------------------------------------------------------------------------------


def test_psycopg2_connection_joins_its_transaction(
    pg2: psycopg2.extensions.connection, dsn: str, schema: str
) -> None:
    pgqueue.insert(pg2, Ok.new({"n": 1}), schema=schema)
    pgqueue.insert_all(pg2, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    pg2.rollback()
    assert count_jobs(dsn, schema) == 0

    one = pgqueue.insert(pg2.cursor(), Ok.new({"n": 1}), schema=schema)
    many = pgqueue.insert_all(pg2, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    assert count_jobs(dsn, schema) == 0  # not committed yet
    pg2.commit()
    assert_stored(dsn, schema, [one, *many])


def test_psycopg2_autocommit_connection_writes_a_batch_whole(
    pg2: psycopg2.extensions.connection, dsn: str, schema: str
) -> None:
    pg2.autocommit = True
    jobs = pgqueue.insert_all(pg2, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    assert_stored(dsn, schema, jobs)


def test_psycopg2_unique_conflict_returns_the_existing_job(
    pg2: psycopg2.extensions.connection, schema: str
) -> None:
    first = pgqueue.insert(pg2, UniqueForever.new({"k": "a", "nested": {"x": [1, 2]}}), schema=schema)
    again = pgqueue.insert(pg2, UniqueForever.new({"k": "a", "nested": {"x": [1, 2]}}), schema=schema)
    pg2.commit()
    assert again.conflict
    assert (again.id, again.args) == (first.id, {"k": "a", "nested": {"x": [1, 2]}})


def test_sqlalchemy_on_psycopg2_session_engine_and_connection(
    pg2_engine: Engine, dsn: str, schema: str
) -> None:
    with Session(pg2_engine) as session:
        pgqueue.insert_all(session, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        session.rollback()
        assert count_jobs(dsn, schema) == 0
        jobs = pgqueue.insert_all(session, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        session.commit()
    # An engine: a transaction of its own, committed on return.
    jobs.append(pgqueue.insert(pg2_engine, Ok.new({"engine": True}), schema=schema))
    with pg2_engine.connect() as connection:
        jobs.append(pgqueue.insert(connection, Ok.new({"connection": True}), schema=schema))
        connection.commit()
    assert_stored(dsn, schema, jobs)


def test_a_psycopg_engine_gets_a_transaction_of_its_own(sa_engine: Engine, dsn: str, schema: str) -> None:
    jobs = pgqueue.insert_all(sa_engine, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    assert_stored(dsn, schema, jobs)


# -- asyncpg --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_asyncpg_connection_joins_its_transaction(
    apg: asyncpg.Connection, dsn: str, schema: str
) -> None:
    tx = apg.transaction()
    await tx.start()
    await pgqueue.ainsert(apg, Ok.new({"n": 1}), schema=schema)
    await pgqueue.ainsert_all(apg, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    await tx.rollback()
    assert count_jobs(dsn, schema) == 0

    async with apg.transaction():
        one = await pgqueue.ainsert(apg, Ok.new({"n": 1}), schema=schema)
        many = await pgqueue.ainsert_all(apg, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        assert count_jobs(dsn, schema) == 0  # not committed yet
    assert_stored(dsn, schema, [one, *many])


@pytest.mark.anyio
async def test_asyncpg_outside_a_transaction_writes_a_batch_whole(
    apg: asyncpg.Connection, dsn: str, schema: str
) -> None:
    jobs = await pgqueue.ainsert_all(apg, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    assert not apg.is_in_transaction()
    assert_stored(dsn, schema, jobs)


@pytest.mark.anyio
async def test_asyncpg_unique_conflict_decodes_the_existing_job(apg: asyncpg.Connection, schema: str) -> None:
    args = {"k": "a", "nested": {"x": [1, 2]}}
    async with apg.transaction():
        first = await pgqueue.ainsert(apg, UniqueForever.new(args), schema=schema)
        again = await pgqueue.ainsert(apg, UniqueForever.new(args), schema=schema)
    assert again.conflict
    assert (again.id, again.args, again.errors, again.meta) == (first.id, args, [], {})


@pytest.mark.anyio
async def test_asyncpg_pool_writes_in_a_transaction_of_its_own(dsn: str, schema: str) -> None:
    async with asyncpg.create_pool(**asyncpg_options(dsn), min_size=1, max_size=2) as pool:
        jobs = await pgqueue.ainsert_all(pool, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        async with pool.acquire() as conn, conn.transaction():
            jobs.append(await pgqueue.ainsert(conn, Ok.new({"proxy": True}), schema=schema))
    assert_stored(dsn, schema, jobs)


@pytest.mark.anyio
async def test_sqlalchemy_on_asyncpg_session_joins_its_transaction(
    apg_engine: AsyncEngine, dsn: str, schema: str
) -> None:
    async with AsyncSession(apg_engine) as session:
        await pgqueue.ainsert_all(session, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        await pgqueue.ainsert(session, Ok.new({"n": 1}), schema=schema)
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        jobs = await pgqueue.ainsert_all(session, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
        jobs.append(await pgqueue.ainsert(session, Ok.new({"n": 1}), schema=schema))
        assert count_jobs(dsn, schema) == 0
        await session.commit()
    assert_stored(dsn, schema, jobs)


@pytest.mark.anyio
async def test_sqlalchemy_on_asyncpg_run_sync_and_engine(
    apg_engine: AsyncEngine, dsn: str, schema: str
) -> None:
    def enqueue(session: Session) -> list[pgqueue.Job]:
        small = pgqueue.insert_all(session, [Ok.new({"small": i}) for i in range(3)], schema=schema)
        return small + pgqueue.insert_all(session, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)

    async with AsyncSession(apg_engine) as session:
        await session.run_sync(enqueue)
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        jobs = await session.run_sync(enqueue)
        await session.commit()
    jobs.append(await pgqueue.ainsert(apg_engine, Ok.new({"engine": True}), schema=schema))
    assert_stored(dsn, schema, jobs)


@pytest.mark.anyio
async def test_sqlalchemy_asyncpg_connection_in_its_own_begin(
    apg_engine: AsyncEngine, dsn: str, schema: str
) -> None:
    async with apg_engine.connect() as connection:
        async with connection.begin():
            await connection.execute(text("SELECT 1"))
            job = await pgqueue.ainsert(connection, Ok.new({"n": 1}), schema=schema)
        assert_stored(dsn, schema, [job])


# -- what is refused ------------------------------------------------------------------------------


def test_an_unsupported_object_is_refused_naming_what_is_supported() -> None:
    with pytest.raises(TypeError, match=r"sqlite3\.Connection: expected a psycopg Connection.*psycopg2"):
        pgqueue.insert(sqlite3.connect(":memory:"), Ok.new({}))
    with pytest.raises(TypeError, match=r"builtins\.object: expected .*asyncpg Connection or Pool"):
        asyncio.run(pgqueue.ainsert(object(), Ok.new({})))


def test_sqlalchemy_on_an_unsupported_driver_is_refused(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with Session(engine) as session, pytest.raises(TypeError, match=r"sqlite3\.Connection: expected"):
        pgqueue.insert(session, Ok.new({}))


@pytest.mark.anyio
async def test_the_wrong_twin_says_which_to_use(
    apg: asyncpg.Connection, pg2: psycopg2.extensions.connection
) -> None:
    with pytest.raises(TypeError, match="async twin"):
        pgqueue.insert(apg, Ok.new({}))
    with pytest.raises(TypeError, match="sync function"):
        await pgqueue.ainsert(pg2, Ok.new({}))


@pytest.mark.anyio
async def test_asyncpg_without_a_statement_cache_as_behind_a_pooler(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(**asyncpg_options(dsn), statement_cache_size=0)
    try:
        args = {"k": "b"}
        async with conn.transaction():
            first = await pgqueue.ainsert(conn, UniqueForever.new(args), schema=schema)
            again = await pgqueue.ainsert(conn, UniqueForever.new(args), schema=schema)
            many = await pgqueue.ainsert_all(conn, [Ok.new({"n": i}) for i in range(BATCH)], schema=schema)
    finally:
        await conn.close()
    assert (again.conflict, again.id, again.args) == (True, first.id, args)
    assert_stored(dsn, schema, [first, *many])
