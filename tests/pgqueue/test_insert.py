"""Inserting into the caller's transaction, for every kind of connection, and unique jobs."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.store import channel_name

from ..helpers import CountingCursor
from .workers import Ok, UniqueDefault, UniqueForever

# pgqueue.insert is also the name of the function the package exports.
insert_module = importlib.import_module("pgqueue.insert")


def count_jobs(dsn: str, schema: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as c:
        query = sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(sql.Identifier(schema, "jobs"))
        row = c.execute(query).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def listener(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema, "insert"))))
        yield conn


def notified_queues(listener: psycopg.Connection[Any], expect: int = 1, timeout: float = 2) -> list[str]:
    return [json.loads(n.payload)["queue"] for n in listener.notifies(timeout=timeout, stop_after=expect)]


# -- the defaults (behaviour 1) ---------------------------------------------------------------


def test_a_new_job_gets_the_documented_defaults(conn: psycopg.Connection[Any], schema: str) -> None:
    class Plain(pgqueue.Worker):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    job = pgqueue.insert(conn, Plain.new({}), schema=schema)

    assert (job.state, job.queue, job.attempt, job.max_attempts, job.priority) == (
        "available",
        "default",
        0,
        20,
        0,
    )
    assert (job.errors, job.tags, job.meta, job.conflict) == ([], [], {}, False)
    assert job.inserted_at == job.scheduled_at


def test_schedule_in_sets_scheduled_at_from_the_database_clock(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(conn, Ok.new({}, schedule_in=10), schema=schema)
    assert job.state == "scheduled"
    assert timedelta(seconds=9) < job.scheduled_at - job.inserted_at <= timedelta(seconds=11)
    at = datetime.now(UTC) + timedelta(hours=1)
    assert pgqueue.insert(conn, Ok.new({}, scheduled_at=at), schema=schema).scheduled_at == at


def test_rows_read_back_what_was_inserted(conn: psycopg.Connection[Any], schema: str) -> None:
    new = Ok.new({"nested": {"list": [1, 2.5, None, True, "ü"]}}, meta={"m": 1}, tags=["a", "b"], priority=3)
    job = pgqueue.insert(conn, new, schema=schema)
    (again,) = pgqueue.all_jobs(conn, pgqueue.JobFilter(ids=[job.id]), schema=schema)
    assert again == job
    assert (again.args, again.meta, again.tags, again.priority) == (new.args, new.meta, ["a", "b"], 3)


# -- insert_all (behaviour 6) ------------------------------------------------------------------


def test_insert_all_returns_jobs_in_input_order(conn: psycopg.Connection[Any], schema: str) -> None:
    jobs = pgqueue.insert_all(
        conn, [Ok.new({"i": i}, queue="special", schedule_in=10) for i in range(3)], schema=schema
    )
    assert [j.args["i"] for j in jobs] == [0, 1, 2]
    assert {j.state for j in jobs} == {"scheduled"}
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert pgqueue.insert_all(conn, [], schema=schema) == []


def test_insert_all_rejects_anything_not_built_by_new(conn: psycopg.Connection[Any], schema: str) -> None:
    with pytest.raises(TypeError, match="Worker.new"):
        pgqueue.insert_all(conn, [Ok.new({}), {"worker": "x"}], schema=schema)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list of jobs"):
        pgqueue.insert_all(conn, Ok.new({}), schema=schema)  # type: ignore[arg-type]


def test_a_small_insert_all_is_one_statement(dsn: str, schema: str) -> None:
    size = insert_module.COPY_THRESHOLD - 1
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(size)], schema=schema)
        assert CountingCursor.statements() == 1
        conn.commit()
    assert [j.args["i"] for j in jobs] == list(range(size))
    assert count_jobs(dsn, schema) == size


@pytest.mark.parametrize(
    "options",
    [{}, {"schedule_in": 30}, {"scheduled_at": datetime(2031, 1, 2, 3, 4, 5, 6, tzinfo=UTC)}],
    ids=["available", "schedule_in", "scheduled_at"],
)
def test_insert_of_one_job_is_one_statement_returning_the_row(
    dsn: str, schema: str, options: dict[str, Any]
) -> None:
    job = Ok.new({"i": 1, "text": "tab\there"}, tags=["a", "b"], meta={"m": 1}, priority=3, **options)
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.reset()
        saved = pgqueue.insert(conn, job, schema=schema)
        assert CountingCursor.statements() == 1
        conn.commit()
        assert pgqueue.get_job(conn, saved.id, schema=schema) == saved
    assert saved.state == ("available" if not options else "scheduled")


@pytest.mark.anyio
async def test_ainsert_of_one_job_returns_the_row(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        saved = await pgqueue.ainsert(conn, Ok.new({"i": 2}, tags=["t"]), schema=schema)
        await conn.commit()
        assert await pgqueue.aget_job(conn, saved.id, schema=schema) == saved


def test_insert_all_of_ten_thousand_jobs_is_two_statements(dsn: str, schema: str) -> None:
    # A batch this large is written by COPY: one statement reserves the ids (and wakes the
    # queue), the COPY itself is the second.
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(10_000)], schema=schema)
        assert CountingCursor.statements() == 2
        conn.commit()
    assert len(jobs) == 10_000
    assert [j.args["i"] for j in jobs] == list(range(10_000))
    assert count_jobs(dsn, schema) == 10_000


def test_insert_all_is_unique_aware_and_one_statement_without_conflicts(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        batch = [UniqueForever.new({"i": i}) for i in range(10_000)]
        CountingCursor.reset()
        first = pgqueue.insert_all(conn, batch, schema=schema)
        assert CountingCursor.statements() == 1
        again = pgqueue.insert_all(conn, [*batch[:5], UniqueForever.new({"i": 10_000})], schema=schema)
        conn.commit()
    assert not any(j.conflict for j in first)
    assert [j.conflict for j in again] == [True] * 5 + [False]
    assert [j.id for j in again[:5]] == [j.id for j in first[:5]]
    assert count_jobs(dsn, schema) == 10_001


def test_duplicates_within_one_batch_insert_once(conn: psycopg.Connection[Any], schema: str) -> None:
    a, b, c = pgqueue.insert_all(
        conn,
        [UniqueForever.new({"x": 1}), UniqueForever.new({"x": 2}), UniqueForever.new({"x": 1})],
        schema=schema,
    )
    assert (a.conflict, b.conflict, c.conflict) == (False, False, True)
    assert c.id == a.id


# -- the caller's transaction, for every kind of connection -----------------------------------


def test_psycopg_rollback_leaves_no_job_and_commit_notifies(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn) as conn:
        pgqueue.insert(conn, Ok.new({"n": 1}), schema=schema)
        conn.rollback()
        assert count_jobs(dsn, schema) == 0
        with conn.cursor() as cur:
            pgqueue.insert(cur, Ok.new({"n": 2}), schema=schema)
        assert count_jobs(dsn, schema) == 0, "not visible before commit"
        conn.commit()
    assert count_jobs(dsn, schema) == 1
    assert notified_queues(listener) == ["alpha"]


@pytest.mark.anyio
async def test_psycopg_async_rollback_leaves_no_job_and_commit_notifies(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await pgqueue.ainsert(conn, Ok.new({}), schema=schema)
        await conn.rollback()
        assert count_jobs(dsn, schema) == 0
        async with conn.cursor() as cur:
            await pgqueue.ainsert(cur, Ok.new({}), schema=schema)
        await conn.commit()
    assert count_jobs(dsn, schema) == 1
    assert notified_queues(listener) == ["alpha"]


def test_sqlalchemy_session_rollback_and_commit(
    sa_engine: Engine, dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    with Session(sa_engine) as session:
        session.execute(text("SELECT 1"))
        pgqueue.insert(session, Ok.new({}), schema=schema)
        session.rollback()
        assert count_jobs(dsn, schema) == 0
        pgqueue.insert(session, Ok.new({}), schema=schema)
        session.commit()
    assert count_jobs(dsn, schema) == 1
    assert notified_queues(listener) == ["alpha"]


def test_sqlalchemy_connection_rollback_and_commit(
    sa_engine: Engine, dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    with sa_engine.connect() as connection:
        pgqueue.insert(connection, Ok.new({}), schema=schema)
        connection.rollback()
        assert count_jobs(dsn, schema) == 0
        pgqueue.insert_all(connection, [Ok.new({}), Ok.new({})], schema=schema)
        connection.commit()
    assert count_jobs(dsn, schema) == 2
    assert notified_queues(listener) == ["alpha"]


@pytest.mark.anyio
async def test_sqlalchemy_async_session_rollback_and_commit(
    sa_async_engine: AsyncEngine, dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    async with AsyncSession(sa_async_engine) as session:
        await pgqueue.ainsert(session, Ok.new({}), schema=schema)
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        await pgqueue.ainsert(session, Ok.new({}), schema=schema)
        await session.commit()
    assert count_jobs(dsn, schema) == 1
    assert notified_queues(listener) == ["alpha"]


@pytest.mark.anyio
async def test_sqlalchemy_async_connection_rollback_and_commit(
    sa_async_engine: AsyncEngine, dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    async with sa_async_engine.connect() as connection:
        await pgqueue.ainsert(connection, Ok.new({}), schema=schema)
        await connection.rollback()
        assert count_jobs(dsn, schema) == 0
        await pgqueue.ainsert(connection, Ok.new({}), schema=schema)
        await connection.commit()
    assert count_jobs(dsn, schema) == 1
    assert notified_queues(listener) == ["alpha"]


def test_sync_and_async_targets_are_not_mixed_up(conn: psycopg.Connection[Any], schema: str) -> None:
    with pytest.raises(TypeError, match="use the async twin"):
        pgqueue.insert(psycopg.AsyncConnection.__new__(psycopg.AsyncConnection), Ok.new({}), schema=schema)
    with pytest.raises(TypeError, match="expected a psycopg Connection"):
        pgqueue.insert(object(), Ok.new({}), schema=schema)


# -- notifications (behaviour 7) --------------------------------------------------------------


def test_only_available_jobs_wake_their_queue(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn) as conn:
        pgqueue.insert(conn, Ok.new({}, queue="gamma", schedule_in=1), schema=schema)
        conn.commit()
        assert notified_queues(listener, timeout=0.3) == []
        pgqueue.insert_all(
            conn, [Ok.new({}, queue="alpha"), Ok.new({}, queue="beta"), Ok.new({})], schema=schema
        )
        conn.commit()
    assert sorted(notified_queues(listener, expect=2)) == ["alpha", "beta"]


def test_notify_false_sends_nothing(dsn: str, schema: str, listener: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as conn:
        pgqueue.insert(conn, Ok.new({}), schema=schema, notify=False)
        conn.commit()
    assert notified_queues(listener, timeout=0.3) == []


# -- unique jobs (behaviours 8-17) -------------------------------------------------------------


_names = iter(range(1_000_000))


def unique_worker(**unique: Any) -> type[pgqueue.Worker]:
    class U(pgqueue.Worker, queue="uniq", unique=unique or True, name=f"tests.Unique{next(_names)}"):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    return U


def test_inserting_a_unique_job_twice_returns_the_same_job(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    first = pgqueue.insert(conn, UniqueDefault.new({"id": 1}), schema=schema)
    second = pgqueue.insert(conn, UniqueDefault.new({"id": 1}), schema=schema)
    assert (first.id, first.conflict) == (second.id, False)
    assert second.conflict is True


def test_concurrent_transactions_inserting_one_unique_job_create_one_row(dsn: str, schema: str) -> None:
    results: list[pgqueue.Job] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(10)

    def insert_one() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT 1")
                barrier.wait(5)
                results.append(pgqueue.insert(conn, UniqueForever.new({"same": True}), schema=schema))
                conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=insert_one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert count_jobs(dsn, schema) == 1
    assert len({j.id for j in results}) == 1
    assert sorted(j.conflict for j in results) == [False] + [True] * 9


def test_unique_by_worker_only(conn: psycopg.Connection[Any], schema: str) -> None:
    a = unique_worker(fields=["worker"], period=None)
    b = unique_worker(fields=["worker"], period=None)
    first = pgqueue.insert(conn, a.new({"x": 1}), schema=schema)
    other = pgqueue.insert(conn, b.new({"x": 1}), schema=schema)
    again = pgqueue.insert(conn, a.new({"x": 2}), schema=schema)
    assert not other.conflict
    assert (again.conflict, again.id) == (True, first.id)


def test_unique_by_keys_of_args(conn: psycopg.Connection[Any], schema: str) -> None:
    by_id = unique_worker(keys=["id"], period=None)
    first = pgqueue.insert(conn, by_id.new({"id": 1, "xd": 1}), schema=schema)
    assert not pgqueue.insert(conn, by_id.new({"id": 2, "xd": 2}), schema=schema).conflict
    same_id = pgqueue.insert(conn, by_id.new({"id": 1, "xd": 3}), schema=schema)
    assert (same_id.conflict, same_id.id) == (True, first.id)


def test_unique_by_whole_args(conn: psycopg.Connection[Any], schema: str) -> None:
    w = unique_worker(fields=["args"], period=None)
    assert not pgqueue.insert(conn, w.new({"id": 1}), schema=schema).conflict
    assert not pgqueue.insert(conn, w.new({}), schema=schema).conflict
    assert pgqueue.insert(conn, w.new({}), schema=schema).conflict
    assert not pgqueue.insert(conn, w.new({"id": 1, "extra": "x"}), schema=schema).conflict


def test_unique_by_meta_keys(conn: psycopg.Connection[Any], schema: str) -> None:
    w = unique_worker(fields=["meta"], keys=["slug"], period=None)
    pgqueue.insert(conn, w.new({}, meta={"slug": "a", "n": 1}), schema=schema)
    assert pgqueue.insert(conn, w.new({}, meta={"slug": "a", "n": 2}), schema=schema).conflict
    assert not pgqueue.insert(conn, w.new({}, meta={"slug": "b"}), schema=schema).conflict


def set_state(conn: psycopg.Connection[Any], schema: str, job_id: int, state: str, **extra: Any) -> None:
    assignments = [sql.SQL("state = {}").format(sql.Literal(state))]
    for column, value in extra.items():
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value)))
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE id = {}").format(
            sql.Identifier(schema, "jobs"), sql.SQL(", ").join(assignments), sql.Literal(job_id)
        )
    )


@pytest.mark.parametrize(
    ("existing_state", "states", "conflict"),
    [
        ("completed", "successful", True),
        ("completed", "incomplete", False),
        ("executing", "incomplete", True),
        ("retryable", ["available", "scheduled", "executing", "retryable", "discarded"], True),
        ("discarded", "successful", False),
        ("cancelled", "all", True),
    ],
)
def test_uniqueness_holds_only_in_the_given_states(
    conn: psycopg.Connection[Any], schema: str, existing_state: str, states: Any, conflict: bool
) -> None:
    w = unique_worker(states=states, period=None)
    first = pgqueue.insert(conn, w.new({"k": 1}), schema=schema)
    extra = {"attempt": 1} if existing_state == "executing" else {}
    set_state(conn, schema, first.id, existing_state, **extra)
    assert pgqueue.insert(conn, w.new({"k": 1}), schema=schema).conflict is conflict


@pytest.mark.parametrize(("period", "conflict"), [(239, False), (241, True), (None, True)])
def test_uniqueness_lasts_for_the_period_after_insertion(
    conn: psycopg.Connection[Any], schema: str, period: int | None, conflict: bool
) -> None:
    w = unique_worker(period=period)
    first = pgqueue.insert(conn, w.new({"k": 1}), schema=schema)
    conn.execute(
        sql.SQL("UPDATE {} SET inserted_at = now() - interval '240 seconds' WHERE id = %s").format(
            sql.Identifier(schema, "jobs")
        ),
        (first.id,),
    )
    second = pgqueue.insert(conn, w.new({"k": 1}), schema=schema)
    assert second.conflict is conflict
    assert (second.id == first.id) is conflict


@pytest.mark.parametrize(("period", "conflict"), [(121, True), (119, False)])
def test_uniqueness_period_can_follow_scheduled_at(
    conn: psycopg.Connection[Any], schema: str, period: int, conflict: bool
) -> None:
    w = unique_worker(period=period, timestamp="scheduled_at")
    first = pgqueue.insert(conn, w.new({"k": 1}), schema=schema)
    conn.execute(
        sql.SQL("UPDATE {} SET scheduled_at = now() - interval '120 seconds' WHERE id = %s").format(
            sql.Identifier(schema, "jobs")
        ),
        (first.id,),
    )
    assert pgqueue.insert(conn, w.new({"k": 1}), schema=schema).conflict is conflict


def test_replace_overwrites_the_listed_fields(conn: psycopg.Connection[Any], schema: str) -> None:
    class Replacing(
        pgqueue.Worker, queue="uniq", unique={"keys": ["id"]}, replace=["scheduled_at", "priority"]
    ):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    first = pgqueue.insert(conn, Replacing.new({"id": 1}, priority=1), schema=schema)
    at = datetime.now(UTC) + timedelta(seconds=5)
    again = pgqueue.insert(conn, Replacing.new({"id": 1}, priority=2, scheduled_at=at), schema=schema)
    assert (again.id, again.conflict, again.priority, again.scheduled_at) == (first.id, True, 2, at)
    assert again.state == "available", "replacing scheduled_at does not change the state"


def test_replace_per_state(conn: psycopg.Connection[Any], schema: str) -> None:
    class PerState(
        pgqueue.Worker, queue="uniq", unique={"keys": ["id"]}, replace={"scheduled": ["priority"]}
    ):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    scheduled = pgqueue.insert(conn, PerState.new({"id": 1}, priority=1, schedule_in=60), schema=schema)
    assert pgqueue.insert(conn, PerState.new({"id": 1}, priority=2), schema=schema).priority == 2
    executing = pgqueue.insert(conn, PerState.new({"id": 2}, priority=1), schema=schema)
    set_state(conn, schema, executing.id, "executing", attempt=1)
    assert pgqueue.insert(conn, PerState.new({"id": 2}, priority=2), schema=schema).priority == 1
    assert scheduled.id != executing.id


@pytest.mark.anyio
async def test_async_session_run_sync_inserts_in_the_same_transaction(
    sa_async_engine: AsyncEngine, dsn: str, schema: str
) -> None:
    async with AsyncSession(sa_async_engine) as session:
        job = await session.run_sync(lambda s: pgqueue.insert(s, Ok.new({"via": "run_sync"}), schema=schema))
        assert job.args == {"via": "run_sync"}
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        await session.run_sync(lambda s: pgqueue.insert_all(s, [Ok.new({}), Ok.new({})], schema=schema))
        await session.commit()
    assert count_jobs(dsn, schema) == 2
