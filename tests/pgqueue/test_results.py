"""Results: the return value recorded with the completing ack, and awaiting a job from any process."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

import pgqueue
from pgqueue.executor import Ack, fetch_params
from pgqueue.job import JobState
from pgqueue.runtime import Runtime
from pgqueue.store import channel_name, queries_for

from ..helpers import await_until

pytestmark = pytest.mark.anyio


class Answer(pgqueue.Worker, queue="results"):
    async def perform(self, job: pgqueue.Job) -> Any:
        if "hold" in job.args:
            await anyio.sleep(job.args["hold"])
        return job.args.get("value")


class Huge(pgqueue.Worker, queue="results"):
    def perform(self, job: pgqueue.Job) -> str:
        return "x" * job.args["size"]


class NotJson(pgqueue.Worker, queue="results"):
    def perform(self, job: pgqueue.Job) -> object:
        return object()


class Fails(pgqueue.Worker, queue="results", max_attempts=1):
    def perform(self, job: pgqueue.Job) -> None:
        raise RuntimeError("the final error")


class Refuses(pgqueue.Worker, queue="results"):
    def perform(self, job: pgqueue.Job) -> pgqueue.Cancel:
        return pgqueue.Cancel("not today")


def stored_result(dsn: str, schema: str, job_id: int) -> tuple[str, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            psycopg.sql.SQL("SELECT state::text, result FROM {} WHERE id = %s").format(
                psycopg.sql.Identifier(schema, "jobs")
            ),
            [job_id],
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def waiters_listening(dsn: str) -> int:
    """Connections idle after reading a job's outcome: waiters that LISTEN and wait."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE state = 'idle' AND query LIKE 'SELECT state::text, result%'"
        ).fetchone()
    return int(row[0]) if row else 0


def insert(dsn: str, schema: str, job: pgqueue.NewJob) -> pgqueue.Job:
    with psycopg.connect(dsn) as conn:
        return pgqueue.insert(conn, job, schema=schema)


def runtime(dsn: str, schema: str, **options: Any) -> Runtime:
    return Runtime(
        dsn,
        schema=schema,
        queues={"results": 5},
        poll_interval=30.0,
        heartbeat_interval=0.2,
        plugins=[],
        shutdown_grace_period=2.0,
        **options,
    )


async def test_a_waiter_started_before_the_job_runs_gets_its_return_value(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Answer.new({"value": {"total": 42, "items": [1, "two"]}, "hold": 0.2}))
    results: list[Any] = []
    got = anyio.Event()

    async def waiter() -> None:
        results.append(await pgqueue.await_job(dsn, job, timeout=20, schema=schema))
        got.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await await_until(lambda: waiters_listening(dsn) > 0)
        async with runtime(dsn, schema):
            with anyio.fail_after(20):
                await got.wait()
    assert results == [{"total": 42, "items": [1, "two"]}]
    assert stored_result(dsn, schema, job.id) == ("completed", {"total": 42, "items": [1, "two"]})


async def test_sync_wait_from_another_thread_and_a_finished_job_returns_at_once(
    dsn: str, schema: str
) -> None:
    job = insert(dsn, schema, Answer.new({"value": [1, 2, 3], "hold": 0.3}))
    async with runtime(dsn, schema):
        value = await anyio.to_thread.run_sync(
            functools.partial(pgqueue.wait, dsn, job.id, 20, schema=schema)
        )
    assert value == [1, 2, 3]
    # Already finished: read at once, no notification needed.
    with psycopg.connect(dsn) as conn:
        started = time.monotonic()
        assert pgqueue.wait(conn, job, 5, schema=schema) == [1, 2, 3]
        assert time.monotonic() - started < 2
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_a_job_gives_its_own_result_and_final_error(dsn: str, schema: str) -> None:
    # Given a job that returns a value and one that is discarded, inserted and kept by the caller
    answer = insert(dsn, schema, Answer.new({"value": {"ok": True}, "hold": 0.2}))
    failing = insert(dsn, schema, Fails.new({}))

    async with runtime(dsn, schema):
        # When each is asked for its result, async and from a thread
        got = await answer.aresult(dsn, timeout=20, schema=schema)
        with pytest.raises(pgqueue.JobFailedError, match="the final error"):
            await anyio.to_thread.run_sync(functools.partial(failing.result, dsn, 20, schema=schema))

    # Then they are what pgqueue.wait says, on a connection of the caller's too
    assert got == {"ok": True}
    with psycopg.connect(dsn) as conn:
        assert answer.result(conn, 5, schema=schema) == pgqueue.wait(conn, answer, 5, schema=schema)


async def test_a_job_returning_none_completes_with_no_result(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Answer.new({}))
    async with runtime(dsn, schema):
        assert await pgqueue.await_job(dsn, job, timeout=20, schema=schema) is None
    assert stored_result(dsn, schema, job.id) == ("completed", None)


async def test_a_result_over_the_cap_completes_the_job_with_a_marker_and_a_warning(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    big = insert(dsn, schema, Huge.new({"size": 5000}))
    small = insert(dsn, schema, Huge.new({"size": 10}))
    with caplog.at_level(logging.WARNING, logger="pgqueue.results"):
        async with runtime(dsn, schema, result_max_bytes=1024):
            with pytest.raises(pgqueue.ResultNotStoredError) as raised:
                await pgqueue.await_job(dsn, big, timeout=20, schema=schema)
            assert await pgqueue.await_job(dsn, small, timeout=20, schema=schema) == "x" * 10
    assert raised.value.reason == "too_large"
    state, marker = stored_result(dsn, schema, big.id)
    assert state == "completed"
    assert marker == {"pgqueue_result": "too_large", "bytes": 5002, "max_bytes": 1024}
    assert any(
        f"job {big.id}" in r.getMessage() and "result_max_bytes" in r.getMessage() for r in caplog.records
    )


async def test_a_result_that_is_not_json_completes_the_job_with_a_marker(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = insert(dsn, schema, NotJson.new({}))
    with caplog.at_level(logging.WARNING, logger="pgqueue.results"):
        async with runtime(dsn, schema):
            with pytest.raises(pgqueue.ResultNotStoredError, match="not_json"):
                await pgqueue.await_job(dsn, job, timeout=20, schema=schema)
    state, marker = stored_result(dsn, schema, job.id)
    assert state == "completed"
    assert marker["pgqueue_result"] == "not_json"
    assert "object is not JSON-serialisable" in marker["error"]
    assert any("not JSON-serialisable" in r.getMessage() for r in caplog.records)


async def test_a_discarded_job_raises_with_its_final_error(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Fails.new({}))
    async with runtime(dsn, schema):
        with pytest.raises(pgqueue.JobFailedError) as raised:
            await pgqueue.await_job(dsn, job, timeout=20, schema=schema)
    assert raised.value.state == "discarded"
    assert raised.value.job_id == job.id
    assert raised.value.error is not None
    assert "RuntimeError: the final error" in raised.value.error
    assert "the final error" in str(raised.value)


async def test_a_job_cancelling_itself_raises_for_its_waiter(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Refuses.new({}))
    async with runtime(dsn, schema):
        with pytest.raises(pgqueue.JobFailedError, match="cancelled: Cancel: 'not today'"):
            await pgqueue.await_job(dsn, job, timeout=20, schema=schema)


async def test_cancelling_a_waiting_job_from_elsewhere_wakes_its_waiter(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Answer.new({}))  # no runtime: it stays available
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pgqueue.await_job(dsn, job, timeout=20, schema=schema)
        except pgqueue.JobFailedError as exc:
            outcome.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await await_until(lambda: waiters_listening(dsn) > 0)
            with psycopg.connect(dsn) as conn:
                assert pgqueue.cancel_job(conn, job, schema=schema)
    assert len(outcome) == 1
    assert "cancelled" in str(outcome[0])


async def test_a_missing_or_pruned_job_is_a_clear_error_never_a_hang(dsn: str, schema: str) -> None:
    with anyio.fail_after(5):
        with pytest.raises(pgqueue.JobNotFoundError, match="job 987654 does not exist"):
            await pgqueue.await_job(dsn, 987654, timeout=None, schema=schema)
    job = insert(dsn, schema, Answer.new({"value": 1}))
    with psycopg.connect(dsn) as conn:
        pgqueue.delete_job(conn, job, schema=schema)
    with pytest.raises(pgqueue.JobNotFoundError):
        pgqueue.wait(dsn, job, None, schema=schema)


async def test_running_out_of_time_raises_a_timeout_error_naming_the_state(dsn: str, schema: str) -> None:
    job = insert(dsn, schema, Answer.new({}))
    started = time.monotonic()
    with pytest.raises(
        pgqueue.WaitTimeoutError, match=f"job {job.id} did not finish within 0.3s \\(it is available\\)"
    ):
        await pgqueue.await_job(dsn, job, timeout=0.3, schema=schema)
    assert 0.25 < time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        pgqueue.wait(dsn, job, 0.1, schema=schema)


async def test_bad_arguments_are_refused_with_the_field_named(dsn: str, schema: str) -> None:
    with pytest.raises(pgqueue.ConfigError, match="timeout must be"):
        pgqueue.wait(dsn, 1, -1, schema=schema)
    with pytest.raises(pgqueue.ConfigError, match="job must be"):
        pgqueue.wait(dsn, "7", 1, schema=schema)  # type: ignore[arg-type]
    with pytest.raises(pgqueue.ConfigError, match="result_max_bytes"):
        runtime(dsn, schema, result_max_bytes=0)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # a transaction is open: LISTEN would wait for its commit
        with pytest.raises(pgqueue.ConfigError, match="outside a transaction"):
            pgqueue.wait(conn, 1, 1, schema=schema)


async def test_one_ack_statement_wakes_once_and_only_for_awaited_jobs(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn:
        jobs = pgqueue.insert_all(conn, [Answer.new({"i": i}) for i in range(5)], schema=schema)
        table = psycopg.sql.Identifier(schema, "jobs")
        conn.execute(psycopg.sql.SQL("UPDATE {} SET state = 'executing', attempt = 1").format(table))
        # what pgqueue.wait does to a job it waits for (jobs 3 and 4: nobody waits)
        conn.execute(
            psycopg.sql.SQL("UPDATE {} SET awaited = true WHERE id <= %s").format(table), [jobs[2].id]
        )
    acks = [
        Ack(jobs[0].id, 1, JobState.COMPLETED),
        Ack(jobs[1].id, 1, JobState.DISCARDED, error="boom"),
        Ack(jobs[2].id, 1, JobState.RETRYABLE, delay=10, error="again"),
        Ack(jobs[3].id, 1, JobState.COMPLETED),
    ]
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as conn:
        listener.execute(
            psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel_name(schema, "result")))
        )
        conn.execute(queries_for(schema).fetch_jobs, fetch_params(acks))
        notes = list(listener.notifies(timeout=1.0))
        # a statement finishing only jobs nobody awaits sends nothing
        conn.execute(queries_for(schema).fetch_jobs, fetch_params([Ack(jobs[4].id, 1, JobState.COMPLETED)]))
        assert list(listener.notifies(timeout=0.3)) == []
    assert [n.payload for n in notes] == [f'{{"ids" : [{jobs[0].id},{jobs[1].id}]}}']


async def test_a_job_finishing_while_its_waiter_marks_it_is_never_missed(dsn: str, schema: str) -> None:
    # The race between the check and the LISTEN, forced: 150 jobs finish while their waiters start
    # (15 at a time: the server is shared).
    with psycopg.connect(dsn) as conn:
        jobs = pgqueue.insert_all(conn, [Answer.new({"value": i}) for i in range(150)], schema=schema)
    values: list[Any] = []
    connections = anyio.CapacityLimiter(15)

    async def waiter(job: pgqueue.Job) -> None:
        async with connections:
            values.append(await pgqueue.await_job(dsn, job, timeout=30, schema=schema))

    with anyio.fail_after(60):
        async with runtime(dsn, schema), anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(waiter, job)
    assert sorted(values) == list(range(150))


def listening_channels(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(row[0]) for row in conn.execute("SELECT pg_listening_channels()").fetchall()]


async def test_a_woken_waiter_leaves_the_callers_connection_idle_and_not_listening(
    dsn: str, schema: str
) -> None:
    # Woken, the waiter reads the row and drops its LISTEN in one round trip: the caller's
    # connection must come back exactly as it was lent, for both twins.
    first, second = (insert(dsn, schema, Answer.new({"value": i, "hold": 0.3})) for i in (1, 2))
    with psycopg.connect(dsn) as sync_conn:
        async with await psycopg.AsyncConnection.connect(dsn) as async_conn, runtime(dsn, schema):
            with anyio.fail_after(20):
                assert await pgqueue.await_job(async_conn, first, timeout=20, schema=schema) == 1
                value = await anyio.to_thread.run_sync(
                    functools.partial(pgqueue.wait, sync_conn, second, 20, schema=schema)
                )
            assert value == 2
            assert not async_conn.autocommit
            assert async_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            rows = await (await async_conn.execute("SELECT pg_listening_channels()")).fetchall()
            assert rows == []
            await async_conn.rollback()
        assert not sync_conn.autocommit
        assert sync_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert listening_channels(sync_conn) == []


async def test_a_wake_up_naming_no_ids_before_the_job_finished_is_followed_by_the_real_one(
    dsn: str, schema: str
) -> None:
    # A wake-up too large to name its ids ('{}') reaches every waiter, finished or not. The waiter
    # then reads its row and drops its LISTEN together; finding the job still running, it must
    # LISTEN again and read again, so the finish that comes later still wakes it.
    job = insert(dsn, schema, Answer.new({}))
    table = psycopg.sql.Identifier(schema, "jobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("UPDATE {} SET state = 'executing', attempt = 1").format(table))
    results: list[Any] = []

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as waiter_conn:
        pid = waiter_conn.info.backend_pid

        def waiter_state() -> tuple[Any, ...]:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT state, state_change FROM pg_stat_activity WHERE pid = %s",
                    [pid],
                ).fetchone()
            assert row is not None
            return tuple(row)

        def awaited() -> bool:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    psycopg.sql.SQL("SELECT awaited FROM {} WHERE id = %s").format(table), [job.id]
                )
                return bool(row.fetchone()[0])  # type: ignore[index]

        async def waiter() -> None:
            results.append(await pgqueue.await_job(waiter_conn, job, timeout=20, schema=schema))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await await_until(awaited)
                await await_until(lambda: waiter_state()[0] == "idle")
                before = waiter_state()[1]
                channel = channel_name(schema, "result")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_notify(%s, '{}')", [channel])
                    # the waiter woke, read the row (still executing) and went back to waiting
                    await await_until(lambda: waiter_state()[1] != before and waiter_state()[0] == "idle")
                    assert results == []
                    acks = [Ack(job.id, 1, JobState.COMPLETED, result=None)]
                    conn.execute(queries_for(schema).fetch_jobs, fetch_params(acks))
        assert results == [None]
        assert await (await waiter_conn.execute("SELECT pg_listening_channels()")).fetchall() == []
    assert stored_result(dsn, schema, job.id) == ("completed", None)
