"""The testing helpers: perform_job, drain_queue, the enqueued assertions and inline mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue.testing import (
    adrain_queue,
    all_enqueued,
    aperform_job,
    assert_enqueued,
    drain_queue,
    inline,
    perform_job,
    refute_enqueued,
)

from .workers import AsyncOk, Chain, Ok, Outcomes


class Echo(pgqueue.Worker, queue="echo"):
    def perform(self, job: pgqueue.Job) -> Any:
        return {"attempt": job.attempt, "max": job.max_attempts, "args": job.args}


class Returns(pgqueue.Worker, queue="echo"):
    def perform(self, job: pgqueue.Job) -> Any:
        kind = job.args["kind"]
        if kind == "exception":
            return ValueError("returned, not raised")
        if kind == "coroutine":
            return AsyncOk().perform(job)
        return None


def test_perform_job_defaults_attempt_to_one_and_passes_string_keys() -> None:
    assert perform_job(Echo, {"a": 1}) == {"attempt": 1, "max": 20, "args": {"a": 1}}
    assert perform_job(Echo, {}, attempt=2, max_attempts=5)["attempt"] == 2
    assert perform_job(Echo.name, {"nested": {"k": [1]}})["args"] == {"nested": {"k": [1]}}


def test_perform_job_returns_outcomes_and_raises_exceptions() -> None:
    assert isinstance(perform_job(Outcomes, {"action": "cancel"}), pgqueue.Cancel)
    assert isinstance(perform_job(Outcomes, {"action": "raise_cancel"}), pgqueue.Cancel)
    assert isinstance(perform_job(Outcomes, {"action": "snooze", "seconds": 5}), pgqueue.Snooze)
    with pytest.raises(RuntimeError, match="FAILED"):
        perform_job(Outcomes, {"action": "raise"})


def test_perform_job_rejects_invalid_results_and_options() -> None:
    with pytest.raises(AssertionError, match="raise it, or return pgqueue.Error"):
        perform_job(Returns, {"kind": "exception"})
    with pytest.raises(AssertionError, match="never awaited"):
        perform_job(Returns, {"kind": "coroutine"})
    with pytest.raises(pgqueue.ConfigError, match="max_attempts must be an integer 1.."):
        perform_job(Echo, {}, max_attempts=-1)
    with pytest.raises(pgqueue.ConfigError, match="attempt must be"):
        perform_job(Echo, {}, attempt=21)
    with pytest.raises(pgqueue.ConfigError, match="unknown worker: nope"):
        perform_job("nope", {})


@pytest.mark.anyio
async def test_aperform_job_runs_async_workers_in_the_callers_loop() -> None:
    assert await aperform_job(AsyncOk, {"x": 1}) == "done"


def test_drain_counts_every_outcome_and_respects_the_limit(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    actions = ["ok", "raise", "ok", "snooze", "cancel", "discard"]
    jobs = [Outcomes.new({"action": a}) for a in actions] + [
        Outcomes.new({"action": "raise"}, max_attempts=1)
    ]
    pgqueue.insert_all(conn, jobs, schema=schema)
    conn.commit()
    assert drain_queue(dsn, "alpha", schema=schema, with_limit=1).success == 1
    result = drain_queue(dsn, "alpha", schema=schema)
    assert result.as_dict() == {"cancelled": 1, "discard": 2, "failure": 1, "snoozed": 1, "success": 1}


def test_drain_with_recursion_runs_jobs_inserted_by_jobs(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    Chain.dsn, Chain.schema = dsn, schema
    pgqueue.insert(conn, Chain.new({"left": 2}), schema=schema)
    conn.commit()
    assert drain_queue(dsn, "chain", schema=schema).success == 1
    assert drain_queue(dsn, "chain", schema=schema, with_recursion=True).success == 2


def test_drain_with_scheduled_runs_future_jobs_up_to_a_time(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    pgqueue.insert_all(
        conn, [Ok.new({"in": 60}, schedule_in=60), Ok.new({"in": 3600}, schedule_in=3600)], schema=schema
    )
    conn.commit()
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert drain_queue(dsn, "alpha", schema=schema, with_scheduled=soon).success == 1
    assert drain_queue(dsn, "alpha", schema=schema, with_scheduled=True).success == 1


def test_drain_with_retries_until_exhausted(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    job = pgqueue.insert(conn, Outcomes.new({"action": "error"}, max_attempts=3), schema=schema)
    conn.commit()
    result = drain_queue(dsn, "alpha", schema=schema, with_scheduled=True, with_recursion=True)
    assert (result.failure, result.discard) == (2, 1)
    final = pgqueue.get_job(conn, job.id, schema=schema)
    assert final is not None
    assert (final.state, final.attempt, len(final.errors)) == ("discarded", 3, 3)


def test_drain_without_safety_raises(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    pgqueue.insert(conn, Outcomes.new({"action": "raise"}), schema=schema)
    conn.commit()
    with pytest.raises(RuntimeError, match="FAILED"):
        drain_queue(dsn, "alpha", schema=schema, with_safety=False)


@pytest.mark.anyio
async def test_adrain_queue(aconn: psycopg.AsyncConnection[Any], dsn: str, schema: str) -> None:
    await pgqueue.ainsert_all(aconn, [AsyncOk.new({}), Ok.new({})], schema=schema)
    await aconn.commit()
    assert (await adrain_queue(dsn, "alpha", schema=schema)).success == 2


def test_all_enqueued_sees_only_waiting_jobs_newest_first(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    a = pgqueue.insert(conn, Ok.new({"n": 1}), schema=schema)
    b = pgqueue.insert(conn, Ok.new({"n": 2}, schedule_in=60), schema=schema)
    c = pgqueue.insert(conn, Outcomes.new({"action": "ok"}), schema=schema)
    conn.commit()
    drain_queue(dsn, "alpha", schema=schema, with_limit=1)  # runs a: now completed
    assert [j.id for j in all_enqueued(conn, schema=schema)] == [c.id, b.id]
    assert [j.id for j in all_enqueued(conn, Ok, schema=schema)] == [b.id]
    assert a.id not in [j.id for j in all_enqueued(conn, schema=schema)]


def test_assert_enqueued_matches_subsets_and_times(conn: psycopg.Connection[Any], schema: str) -> None:
    pgqueue.insert(
        conn,
        Ok.new({"user": {"id": 1, "name": "x"}, "k": 2}, schedule_in=3600, meta={"m": 1}, tags=["t"]),
        schema=schema,
    )
    conn.commit()
    assert_enqueued(conn, Ok, schema=schema, args={"user": {"id": 1}})
    assert_enqueued(conn, Ok, schema=schema, args={"user": "_"}, meta={"m": 1}, tags=["t"])
    assert_enqueued(conn, schema=schema, scheduled_in=3600)
    assert_enqueued(conn, schema=schema, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    refute_enqueued(conn, Ok, schema=schema, args={"user": {"id": 2}})
    with pytest.raises(AssertionError, match="expected a job matching") as info:
        assert_enqueued(conn, Ok, schema=schema, args={"user": {"id": 2}})
    assert "'user': {'id': 1, 'name': 'x'}" in str(info.value)
    with pytest.raises(AssertionError, match="expected no job"):
        refute_enqueued(conn, Ok, schema=schema)


def test_assert_enqueued_can_wait_for_a_job(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    import threading

    def insert_later() -> None:
        with psycopg.connect(dsn) as other:
            pgqueue.insert(other, Ok.new({"late": True}), schema=schema)

    timer = threading.Timer(0.1, insert_later)
    timer.start()
    try:
        conn.autocommit = True
        assert_enqueued(conn, Ok, schema=schema, args={"late": True}, timeout=5)
    finally:
        timer.join()


def test_inline_mode_runs_jobs_at_insert_without_the_database() -> None:
    with inline():
        ok = pgqueue.insert(None, Outcomes.new({"action": "ok"}))
        error = pgqueue.insert(None, Outcomes.new({"action": "error"}))
        snooze = pgqueue.insert(None, Outcomes.new({"action": "snooze"}, schedule_in=600))
        discard = pgqueue.insert(None, Outcomes.new({"action": "discard"}))
        cancel = pgqueue.insert(None, Outcomes.new({"action": "cancel"}))
        with pytest.raises(RuntimeError, match="FAILED"):
            pgqueue.insert(None, Outcomes.new({"action": "raise"}))
    assert (ok.state, ok.attempt) == ("completed", 1)
    assert ok.completed_at is not None
    assert (error.state, len(error.errors)) == ("retryable", 1)
    assert (snooze.state, snooze.attempt, snooze.meta["snoozed"]) == ("scheduled", 0, 1)
    assert discard.state == "discarded"
    assert cancel.state == "cancelled"


@pytest.mark.anyio
async def test_inline_mode_with_ainsert() -> None:
    with inline():
        job = await pgqueue.ainsert(None, AsyncOk.new({}))
    assert job.state == "completed"
