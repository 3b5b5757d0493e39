"""Bulk inserts written with COPY: the same jobs as the one-statement path, on every target.

Batches of at least ``COPY_THRESHOLD`` jobs with no unique job are written with a reserving
statement and a COPY; these tests check that what comes back is exactly what the database stored,
in the caller's transaction, and that every case COPY can't handle takes the JSON path.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.job import JobState
from pgqueue.store import channel_name

from ..helpers import AsyncCountingCursor, CountingCursor
from .workers import Ok, UniqueForever

# pgqueue.insert is also the name of the function the package exports.
insert_module = importlib.import_module("pgqueue.insert")
THRESHOLD: int = insert_module.COPY_THRESHOLD


class Odd(pgqueue.Worker, queue="odd\tqueue\\with\nspecials", name='tests.copy\tworker\\ "odd"\r'):
    def perform(self, job: pgqueue.Job) -> None:
        pass


def read_back(conn: psycopg.Connection[Any], schema: str, ids: Sequence[int]) -> list[pgqueue.Job]:
    rows = pgqueue.all_jobs(conn, pgqueue.JobFilter(ids=list(ids)), schema=schema, limit=len(ids) + 1)
    return sorted(rows, key=lambda job: job.id)


def count_jobs(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "jobs"))).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def listener(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema, "insert"))))
        yield conn


def all_notified_queues(listener: psycopg.Connection[Any], timeout: float = 0.5) -> list[str]:
    """Every notification that arrives within ``timeout`` (not just the first few)."""
    return sorted(json.loads(n.payload)["queue"] for n in listener.notifies(timeout=timeout))


def assert_same_as_read_back(jobs: Sequence[pgqueue.Job], again: Sequence[pgqueue.Job]) -> None:
    assert len(again) == len(jobs)
    for job, stored in zip(jobs, again, strict=True):
        assert job == stored
        # Equal is not enough: the same types, and datetimes in the same zone as the database's.
        assert [type(v) for v in job] == [type(v) for v in stored]
        assert job.scheduled_at.tzinfo == stored.scheduled_at.tzinfo
        assert job.scheduled_at.utcoffset() == stored.scheduled_at.utcoffset()


# -- what comes back is what was stored ---------------------------------------------------------


def test_a_large_batch_is_a_reserve_and_a_copy_and_returns_what_was_stored(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (1, 1)
        conn.commit()
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [j.args["i"] for j in jobs] == list(range(THRESHOLD))
    ids = [j.id for j in jobs]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(
        (j.state, j.queue, j.attempt, j.errors, j.conflict) == ("available", "alpha", 0, [], False)
        for j in jobs
    )
    assert all(j.inserted_at == j.scheduled_at for j in jobs)


def mixed_batch(at: datetime) -> list[pgqueue.NewJob]:
    """Available and scheduled jobs (by time and by delay), with per-job options."""
    jobs: list[pgqueue.NewJob] = []
    for i in range(THRESHOLD * 2):
        kind = i % 5
        if kind == 0:
            jobs.append(Ok.new({"i": i}))
        elif kind == 1:
            jobs.append(Ok.new({"i": i}, scheduled_at=at + timedelta(minutes=i), queue="later"))
        elif kind == 2:
            # Days 61 apart over a year: one of them is across a daylight saving time change.
            delays = [10, 0.5, -3.25, *(86_400 * days for days in (61, 122, 183, 244, 305))]
            jobs.append(Ok.new({"i": i}, schedule_in=delays[i % len(delays)]))
        elif kind == 3:
            jobs.append(
                Ok.new(
                    {"i": i},
                    tags=["b", f"t{i % 3}"],
                    meta={"m": i, "nested": {"x": [1, None]}},
                    priority=i % 10,
                    max_attempts=1 + i % 7,
                    queue=f"q{i % 4}",
                )
            )
        else:
            jobs.append(Odd.new({"i": i}, tags=[], meta={}))
    return jobs


def test_available_and_scheduled_jobs_with_their_own_options_in_one_batch(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    # Times in a zone other than the session's, which is not UTC either: the jobs carry the
    # instant given, in the session's zone, as a read would give it back.
    conn.execute("SET TIME ZONE 'America/St_Johns'")
    at = datetime(2031, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    batch = mixed_batch(at)
    jobs = pgqueue.insert_all(conn, batch, schema=schema)
    assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    now = jobs[0].inserted_at
    for new, job in zip(batch, jobs, strict=True):
        assert (job.args, job.meta, job.tags) == (new.args, new.meta, list(new.tags))
        assert (job.queue, job.worker, job.priority, job.max_attempts) == (
            new.queue,
            new.worker,
            new.priority,
            new.max_attempts,
        )
        assert job.inserted_at == now
        if new.scheduled_at is not None:
            assert (job.state, job.scheduled_at) == ("scheduled", new.scheduled_at)
        elif new.schedule_in is not None:
            assert job.state == "scheduled"
            assert job.scheduled_at == now.astimezone(UTC) + timedelta(seconds=new.schedule_in)
        else:
            assert (job.state, job.scheduled_at) == ("available", now)


def test_copy_returns_exactly_what_the_json_path_returns(
    conn: psycopg.Connection[Any], schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("SET TIME ZONE 'Europe/Berlin'")
    at = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
    batch = mixed_batch(at)
    by_copy = pgqueue.insert_all(conn, batch, schema=schema)
    monkeypatch.setattr(insert_module, "COPY_THRESHOLD", len(batch) + 1)
    by_json = pgqueue.insert_all(conn, batch, schema=schema)  # same transaction: same now()
    for a, b in zip(by_copy, by_json, strict=True):
        assert a._replace(id=0) == b._replace(id=0)
        assert [type(v) for v in a] == [type(v) for v in b]
        assert a.scheduled_at.tzinfo == b.scheduled_at.tzinfo
        assert a.scheduled_at.utcoffset() == b.scheduled_at.utcoffset()


def test_text_that_needs_escaping_round_trips(conn: psycopg.Connection[Any], schema: str) -> None:
    awkward = [
        "back\\slash",
        "\\N",
        "tab\there",
        "new\nline",
        "carriage\rreturn",
        "quote \" and '",
        "ünïcödé 😀 \u2028",
        "\\u0000 spelled out",
        "{brace,comma}",
        "NULL",
        "",
    ]
    batch = [
        Odd.new(
            {"text": text, "list": [text, {text: text}]},
            meta={"m": text},
            tags=[text or "x", "plain"],
        )
        for _ in range(THRESHOLD // len(awkward) + 1)
        for text in awkward
    ]
    jobs = pgqueue.insert_all(conn, batch, schema=schema)
    assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [j.args for j in jobs] == [n.args for n in batch]
    assert [j.tags for j in jobs] == [list(n.tags) for n in batch]
    assert {j.worker for j in jobs} == {Odd.name}
    assert {j.queue for j in jobs} == {Odd.queue}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(), min_size=1, max_size=4),
    tags=st.lists(st.text(max_size=6), max_size=3),
    queue=st.text(min_size=1, max_size=12),
)
def test_any_text_new_accepts_round_trips_through_copy(
    conn: psycopg.Connection[Any], schema: str, texts: list[str], tags: list[str], queue: str
) -> None:
    try:
        batch = [
            Ok.new({"i": i, "texts": texts}, meta={texts[0]: texts}, tags=tags, queue=queue)
            for i in range(THRESHOLD)
        ]
    except (TypeError, pgqueue.ConfigError):
        return  # new() refused it (NUL, unpaired surrogates, a blank queue): nothing to insert
    jobs = pgqueue.insert_all(conn, batch, schema=schema)
    assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [(j.args, j.meta, j.tags, j.queue) for j in jobs] == [
        (n.args, n.meta, list(n.tags), n.queue) for n in batch
    ]
    conn.rollback()


def test_json_with_raw_whitespace_from_a_hand_built_job_is_escaped(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    # new() never produces this (orjson escapes control characters), but JSON may hold raw tabs,
    # newlines and CRs between tokens, and a NewJob is a plain named tuple anyone can build.
    batch = [
        Ok.new({"i": i})._replace(args_json=f'{{\t"i":\r\n{i}}}', meta_json='{\n"k":\t1}', meta={"k": 1})
        for i in range(THRESHOLD)
    ]
    jobs = pgqueue.insert_all(conn, batch, schema=schema)
    assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [j.args for j in jobs] == [{"i": i} for i in range(THRESHOLD)]


def test_ids_that_are_not_consecutive_still_come_back_in_input_order(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    # As when other transactions take ids from the sequence while the batch reserves its own.
    sequence = conn.execute(
        "SELECT pg_get_serial_sequence(%s, 'id')",
        (sql.Identifier(schema, "jobs").as_string(conn),),
    ).fetchone()
    assert sequence is not None
    conn.execute(sql.SQL("ALTER SEQUENCE {} INCREMENT BY 3").format(sql.SQL(sequence[0])))
    jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
    ids = [j.id for j in jobs]
    assert ids == sorted(ids)
    assert {b - a for a, b in itertools.pairwise(ids)} == {3}
    assert_same_as_read_back(jobs, read_back(conn, schema, ids))


# -- the caller's transaction -----------------------------------------------------------------


def test_rollback_leaves_nothing_and_commit_wakes_each_queue_with_available_jobs_once(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    batch = [
        *(Ok.new({"i": i}, queue="alpha") for i in range(THRESHOLD)),
        *(Ok.new({"i": i}, queue="beta") for i in range(THRESHOLD)),
        *(Ok.new({"i": i}, queue="gamma", schedule_in=60) for i in range(THRESHOLD)),
    ]
    with psycopg.connect(dsn) as conn:
        pgqueue.insert_all(conn, batch, schema=schema)
        conn.rollback()
        assert count_jobs(dsn, schema) == 0
        assert all_notified_queues(listener) == []
        pgqueue.insert_all(conn, batch, schema=schema)
        assert count_jobs(dsn, schema) == 0, "not visible before commit"
        conn.commit()
    assert count_jobs(dsn, schema) == len(batch)
    assert all_notified_queues(listener) == ["alpha", "beta"]


def test_notify_false_sends_nothing(dsn: str, schema: str, listener: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as conn:
        pgqueue.insert_all(conn, [Ok.new({}) for _ in range(THRESHOLD)], schema=schema, notify=False)
        conn.commit()
    assert count_jobs(dsn, schema) == THRESHOLD
    assert all_notified_queues(listener) == []


def test_a_row_the_database_refuses_aborts_the_whole_batch(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    # new() refuses a priority of 10; a hand-built job gets as far as the table's CHECK.
    batch = [Ok.new({"i": i}) for i in range(THRESHOLD)]
    batch[-1] = batch[-1]._replace(priority=10)
    with psycopg.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            pgqueue.insert_all(conn, batch, schema=schema)
        conn.rollback()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            pgqueue.insert_all(conn, batch, schema=schema)
    assert count_jobs(dsn, schema) == 0
    assert all_notified_queues(listener) == []


def test_the_garbage_collector_is_left_as_it_was_found(dsn: str, schema: str) -> None:
    # The collector is paused while a batch is written, then put back: on, off, and after a failure.
    batch = [Ok.new({"i": i}) for i in range(THRESHOLD)]
    refused = [*batch[:-1], batch[-1]._replace(priority=10)]
    was_enabled = gc.isenabled()
    try:
        for enabled, jobs in ((True, batch), (False, batch), (True, refused)):
            (gc.enable if enabled else gc.disable)()
            with psycopg.connect(dsn) as conn, contextlib.suppress(psycopg.errors.CheckViolation):
                pgqueue.insert_all(conn, jobs, schema=schema)
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()
    assert count_jobs(dsn, schema) == 2 * THRESHOLD


def test_autocommit_runs_the_two_statements_in_one_transaction(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert all_notified_queues(listener) == ["alpha"]


def test_a_batch_with_one_unique_job_takes_the_json_path(dsn: str, schema: str) -> None:
    batch = [*(Ok.new({"i": i}) for i in range(THRESHOLD)), UniqueForever.new({"u": 1})]
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, batch, schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (1, 0)
        again = pgqueue.insert_all(conn, batch, schema=schema)
        conn.commit()
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [j.conflict for j in jobs] == [False] * len(batch)
    assert again[-1].conflict
    assert again[-1].id == jobs[-1].id
    assert not any(j.conflict for j in again[:-1])


# -- roles that may insert but not COPY -------------------------------------------------------


@pytest.fixture
def app_role(dsn: str, schema: str) -> Iterator[str]:
    """A login-less role with INSERT and SELECT on the jobs table and nothing more."""
    role = f"pgq_copy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        # The suite's user may create roles (a superuser on the local and embedded servers).
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("GRANT INSERT, SELECT ON {} TO {}").format(
                sql.Identifier(schema, "jobs"), sql.Identifier(role)
            )
        )
        try:
            yield role
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_nextval_on_the_sequence_takes_the_json_path(
    dsn: str, schema: str, app_role: str, listener: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app_role)))
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (2, 0)  # reserve (refused), JSON
        conn.commit()
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert all_notified_queues(listener) == ["alpha"]


def test_row_level_security_takes_the_json_path(dsn: str, schema: str, app_role: str) -> None:
    jobs_table = sql.Identifier(schema, "jobs")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(jobs_table))
        admin.execute(
            sql.SQL("CREATE POLICY everything ON {} TO {} USING (true) WITH CHECK (true)").format(
                jobs_table, sql.Identifier(app_role)
            )
        )
        admin.execute(
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(app_role)
            )
        )
    with psycopg.connect(dsn, cursor_factory=CountingCursor) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app_role)))
        CountingCursor.reset()
        jobs = pgqueue.insert_all(conn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (2, 0)
        conn.commit()
    assert count_jobs(dsn, schema) == len(jobs) == THRESHOLD


# -- every kind of target ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_copy_returns_what_was_stored_and_rolls_back(
    dsn: str, schema: str, listener: psycopg.Connection[Any]
) -> None:
    at = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
    batch = mixed_batch(at)
    async with await psycopg.AsyncConnection.connect(dsn, cursor_factory=AsyncCountingCursor) as aconn:
        await pgqueue.ainsert_all(aconn, batch, schema=schema)
        await aconn.rollback()
        assert count_jobs(dsn, schema) == 0
        AsyncCountingCursor.reset()
        jobs = await pgqueue.ainsert_all(aconn, batch, schema=schema)
        assert (AsyncCountingCursor.executes, AsyncCountingCursor.copies) == (1, 1)
        await aconn.commit()
    with psycopg.connect(dsn) as conn:
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
    assert [j.args for j in jobs] == [n.args for n in batch]
    available = {n.queue for n in batch if n.state is JobState.AVAILABLE}
    assert all_notified_queues(listener) == sorted(available)
    assert {"alpha", "q0", "q3", Odd.queue} <= available


@pytest.mark.anyio
async def test_async_autocommit_and_a_unique_job(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        jobs = await pgqueue.ainsert_all(aconn, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
        mixed = await pgqueue.ainsert_all(
            aconn, [*(Ok.new({"i": i}) for i in range(THRESHOLD)), UniqueForever.new({})], schema=schema
        )
    assert count_jobs(dsn, schema) == 2 * THRESHOLD + 1
    with psycopg.connect(dsn) as conn:
        assert_same_as_read_back([*jobs, *mixed], read_back(conn, schema, [j.id for j in [*jobs, *mixed]]))


@pytest.fixture
def counting_engine(sqlalchemy_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url, connect_args={"cursor_factory": CountingCursor})
    yield engine
    engine.dispose()


@pytest.fixture
async def async_counting_engine(sqlalchemy_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url, connect_args={"cursor_factory": AsyncCountingCursor})
    yield engine
    await engine.dispose()


def test_sqlalchemy_session_and_connection(counting_engine: Engine, dsn: str, schema: str) -> None:
    batch = [Ok.new({"i": i}) for i in range(THRESHOLD)]
    with Session(counting_engine) as session:
        pgqueue.insert_all(session, batch, schema=schema)
        session.rollback()
        assert count_jobs(dsn, schema) == 0
        CountingCursor.reset()
        jobs = pgqueue.insert_all(session, batch, schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (1, 1)
        session.commit()
    with counting_engine.connect() as connection:
        CountingCursor.reset()
        jobs += pgqueue.insert_all(connection, batch, schema=schema)
        assert (CountingCursor.executes, CountingCursor.copies) == (1, 1)
        connection.commit()
    with psycopg.connect(dsn) as conn:
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))


def test_sqlalchemy_autocommit_connection(sa_engine: Engine, dsn: str, schema: str) -> None:
    with sa_engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        jobs = pgqueue.insert_all(connection, [Ok.new({"i": i}) for i in range(THRESHOLD)], schema=schema)
    with psycopg.connect(dsn) as conn:
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))


@pytest.mark.anyio
async def test_sqlalchemy_async_session_and_run_sync(
    async_counting_engine: AsyncEngine, dsn: str, schema: str
) -> None:
    batch = [Ok.new({"i": i}) for i in range(THRESHOLD)]
    async with AsyncSession(async_counting_engine) as session:
        await pgqueue.ainsert_all(session, batch, schema=schema)
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        AsyncCountingCursor.reset()
        jobs = await pgqueue.ainsert_all(session, batch, schema=schema)
        assert (AsyncCountingCursor.executes, AsyncCountingCursor.copies) == (1, 1)
        # A sync Session over the async driver: COPY through SQLAlchemy's bridge to it.
        jobs += await session.run_sync(lambda s: pgqueue.insert_all(s, batch, schema=schema))
        assert (AsyncCountingCursor.executes, AsyncCountingCursor.copies) == (2, 2)
        await session.rollback()
        assert count_jobs(dsn, schema) == 0
        jobs = await session.run_sync(lambda s: pgqueue.insert_all(s, batch, schema=schema))
        await session.commit()
    with psycopg.connect(dsn) as conn:
        assert_same_as_read_back(jobs, read_back(conn, schema, [j.id for j in jobs]))
