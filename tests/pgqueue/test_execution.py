"""Execution semantics: every outcome, backoff, timeouts, snoozes and the fenced ack.

Jobs run through the real executor and are acked with the real statement, via ``drain_queue``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.executor import Ack, fetch_params, fetch_result
from pgqueue.job import JobState
from pgqueue.runtime import Runtime
from pgqueue.store import queries_for
from pgqueue.testing import drain_queue

from .workers import Outcomes, TimesOut


def jobs_by_action(conn: psycopg.Connection[Any], schema: str) -> dict[str, pgqueue.Job]:
    conn.rollback()
    return {j.args.get("action", "ok"): j for j in pgqueue.all_jobs(conn, schema=schema)}


def test_each_outcome_ends_in_its_state(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    actions = ["ok", "cancel", "discard", "error", "snooze", "raise", "raise_cancel"]
    pgqueue.insert_all(conn, [Outcomes.new({"action": a}) for a in actions], schema=schema)
    conn.commit()

    result = drain_queue(dsn, "alpha", schema=schema)

    assert result.as_dict() == {"cancelled": 2, "discard": 1, "failure": 2, "snoozed": 1, "success": 1}
    jobs = jobs_by_action(conn, schema)
    assert jobs["ok"].state == "completed"
    assert jobs["ok"].completed_at is not None
    assert jobs["cancel"].state == "cancelled"
    assert jobs["cancel"].cancelled_at is not None
    assert jobs["cancel"].errors[0]["error"] == "Cancel: 'because'"
    assert jobs["raise_cancel"].state == "cancelled"
    assert jobs["discard"].state == "discarded"
    assert jobs["discard"].discarded_at is not None
    for failed in ("error", "raise"):
        assert jobs[failed].state == "retryable"
        assert jobs[failed].scheduled_at > datetime.now(UTC) + timedelta(seconds=15)
    assert jobs["snooze"].state == "scheduled"


def test_failure_errors_record_attempt_time_and_traceback(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    job = pgqueue.insert(conn, Outcomes.new({"action": "raise"}), schema=schema)
    conn.commit()
    drain_queue(dsn, "alpha", schema=schema)

    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    (error,) = again.errors
    assert error["attempt"] == 1
    assert datetime.fromisoformat(error["at"]) <= datetime.now(UTC)
    assert error["error"].startswith("RuntimeError: FAILED")
    assert "Traceback" in error["error"]
    assert 'raise RuntimeError("FAILED")' in error["error"]


@pytest.mark.parametrize(("max_attempts", "state"), [(1, "discarded"), (2, "retryable")])
def test_an_error_on_the_last_attempt_discards(
    conn: psycopg.Connection[Any], dsn: str, schema: str, max_attempts: int, state: str
) -> None:
    job = pgqueue.insert(conn, Outcomes.new({"action": "error"}, max_attempts=max_attempts), schema=schema)
    conn.commit()
    result = drain_queue(dsn, "alpha", schema=schema)
    assert pgqueue.get_job(conn, job.id, schema=schema).state == state  # type: ignore[union-attr]
    assert (result.discard, result.failure) == ((1, 0) if state == "discarded" else (0, 1))


def test_a_timeout_is_a_failure_with_a_clear_error_and_the_custom_backoff(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    job = pgqueue.insert(conn, TimesOut.new({}), schema=schema)
    conn.commit()
    drain_queue(dsn, "alpha", schema=schema)

    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    assert again.state == "retryable"
    assert again.errors[0]["error"].startswith(
        "pgqueue.errors.TimeoutError: tests.pgqueue.workers.TimesOut timed out after 5ms"
    )
    due_in = (again.scheduled_at - datetime.now(UTC)).total_seconds()
    assert 0 <= due_in <= 2, "the worker's backoff of 1 s was used"


def test_a_sync_job_past_its_timeout_fails_and_is_told_to_stop(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    from .workers import SyncSleepy

    job = pgqueue.insert(conn, SyncSleepy.new({"seconds": 5, "timeout": 0.05}), schema=schema)
    conn.commit()
    result = drain_queue(dsn, "alpha", schema=schema)
    assert result.failure == 1
    assert "timed out after 50ms" in pgqueue.get_job(conn, job.id, schema=schema).errors[0]["error"]  # type: ignore[union-attr]


def test_jobs_run_highest_priority_first(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    pgqueue.insert_all(conn, [Outcomes.new({"p": p}, priority=p) for p in (3, 2, 1, 0)], schema=schema)
    conn.commit()
    result = drain_queue(dsn, "alpha", schema=schema)
    assert [e.job.priority for e in result.executions] == [0, 1, 2, 3]


def test_scheduled_jobs_run_once_staged_and_not_before(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    pgqueue.insert_all(
        conn, [Outcomes.new({"n": n}, schedule_in=s) for n, s in ((1, -2), (2, -1), (3, 1))], schema=schema
    )
    conn.commit()
    assert drain_queue(dsn, "alpha", schema=schema).success == 0, "scheduled jobs wait for the stager"
    now = datetime.now(UTC)
    result = drain_queue(dsn, "alpha", schema=schema, with_scheduled=now)
    assert sorted(e.job.args["n"] for e in result.executions) == [1, 2]


@pytest.mark.parametrize(("seconds", "expected"), [(0, 0), (300, 300), (timedelta(hours=1), 3600)])
def test_snooze_reschedules_by_its_period(
    conn: psycopg.Connection[Any], dsn: str, schema: str, seconds: Any, expected: float
) -> None:
    class Snoozer(pgqueue.Worker, queue="snooze", name=f"tests.Snoozer{expected}"):
        def perform(self, job: pgqueue.Job) -> pgqueue.Snooze:
            return pgqueue.Snooze(seconds)

    job = pgqueue.insert(conn, Snoozer.new({}), schema=schema)
    conn.commit()
    drain_queue(dsn, "snooze", schema=schema)
    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    delta = (again.scheduled_at - datetime.now(UTC)).total_seconds()
    assert expected - 2 <= delta <= expected + 1


def test_invalid_snooze_periods_are_rejected_where_they_are_made() -> None:
    for bad in (True, "5", -1, float("nan")):
        with pytest.raises(pgqueue.ConfigError, match="snooze"):
            pgqueue.Snooze(bad)  # type: ignore[arg-type]


def test_unknown_worker_fails_with_a_clear_error(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (worker, queue, max_attempts) "
            "VALUES ('os.system', 'alpha', 1), ('Nope', 'alpha', 2)"
        ).format(sql.Identifier(schema, "jobs"))
    )
    conn.commit()
    result = drain_queue(dsn, "alpha", schema=schema)
    assert (result.discard, result.failure) == (1, 1), "attempt == max_attempts is exhausted"
    for job in pgqueue.all_jobs(conn, schema=schema):
        assert job.errors[0]["error"].startswith("pgqueue.errors.UnknownWorkerError: unknown worker: ")


def ack(conn: psycopg.Connection[Any], schema: str, acks: list[Ack]) -> int:
    """Write ``acks``; how many passed the fence."""
    rows = conn.execute(queries_for(schema).fetch_jobs, fetch_params(acks)).fetchall()
    conn.commit()
    acked, claimed = fetch_result(rows)
    assert len(rows) == 1, "an ack-only statement returns its count alone"
    assert claimed == [], "an ack-only statement claims nothing"
    return acked


def fetch(
    conn: psycopg.Connection[Any], schema: str, queue: str = "alpha", demand: int = 10
) -> list[pgqueue.Job]:
    params = fetch_params([], queue=queue, demand=demand, node="n1", producer="p1")
    rows = conn.execute(queries_for(schema).fetch_jobs, params).fetchall()
    conn.commit()
    return fetch_result(rows)[1]


def test_fetch_claims_by_demand_and_marks_the_attempt(conn: psycopg.Connection[Any], schema: str) -> None:
    pgqueue.insert_all(conn, [Outcomes.new({"i": i}) for i in range(5)], schema=schema)
    conn.commit()
    first = fetch(conn, schema, demand=3)
    assert len(first) == 3
    assert {(j.state, j.attempt, tuple(j.attempted_by or ())) for j in first} == {
        ("executing", 1, ("n1", "p1"))
    }
    assert len(fetch(conn, schema, demand=10)) == 2
    assert fetch(conn, schema) == []


def test_acks_are_fenced_by_state_and_attempt(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(conn, Outcomes.new({}), schema=schema)
    conn.commit()
    (running,) = fetch(conn, schema)

    # A stale attempt number never lands.
    assert ack(conn, schema, [Ack(job.id, running.attempt - 1, JobState.COMPLETED)]) == 0
    # The job is cancelled by someone else meanwhile: the late ack is rejected.
    assert pgqueue.cancel_job(conn, job.id, schema=schema)
    conn.commit()
    assert ack(conn, schema, [Ack(job.id, running.attempt, JobState.COMPLETED)]) == 0
    assert pgqueue.get_job(conn, job.id, schema=schema).state == "cancelled"  # type: ignore[union-attr]


def test_a_rescued_and_refetched_job_rejects_the_old_attempts_ack(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(conn, Outcomes.new({}), schema=schema)
    conn.commit()
    (first,) = fetch(conn, schema)
    conn.execute(
        sql.SQL("UPDATE {} SET state = 'available' WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        (job.id,),
    )
    conn.commit()
    (second,) = fetch(conn, schema)
    assert second.attempt == first.attempt + 1
    assert ack(conn, schema, [Ack(job.id, first.attempt, JobState.DISCARDED, error="late")]) == 0
    assert ack(conn, schema, [Ack(job.id, second.attempt, JobState.COMPLETED)]) == 1


def test_snooze_rolls_back_the_attempt_and_counts_snoozes(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(
        conn, Outcomes.new({}, max_attempts=5, meta={"key": "val", "snoozed": 1}), schema=schema
    )
    conn.commit()
    conn.execute(
        sql.SQL("UPDATE {} SET attempt = 1 WHERE id = %s").format(sql.Identifier(schema, "jobs")), (job.id,)
    )
    conn.commit()
    (running,) = fetch(conn, schema)
    assert running.attempt == 2

    assert ack(conn, schema, [Ack(job.id, 2, JobState.SCHEDULED, delay=60)]) == 1

    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    assert (again.state, again.attempt, again.max_attempts) == ("scheduled", 1, 5)
    assert again.meta == {"key": "val", "snoozed": 2}


def test_one_ack_statement_records_many_outcomes(conn: psycopg.Connection[Any], schema: str) -> None:
    pgqueue.insert_all(conn, [Outcomes.new({"i": i}) for i in range(4)], schema=schema)
    conn.commit()
    a, b, c, d = fetch(conn, schema)
    acked = ack(
        conn,
        schema,
        [
            Ack(a.id, 1, JobState.COMPLETED),
            Ack(b.id, 1, JobState.RETRYABLE, delay=30, error="boom"),
            Ack(c.id, 1, JobState.CANCELLED, error="stop"),
            Ack(d.id, 1, JobState.DISCARDED, error="gone"),
        ],
    )
    assert acked == 4
    states = {j.id: j.state for j in pgqueue.all_jobs(conn, schema=schema)}
    assert states == {a.id: "completed", b.id: "retryable", c.id: "cancelled", d.id: "discarded"}


def test_async_commit_applies_to_the_fetch_transaction_only(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    show = "SELECT current_setting('synchronous_commit')"
    queries = queries_for(schema)
    conn.execute(queries.fetch_jobs, fetch_params([], queue="alpha", demand=1, async_commit=True))
    assert conn.execute(show).fetchone() == ("off",), "the claim's own transaction skips the flush wait"
    conn.commit()
    assert conn.execute(show).fetchone() == ("on",), "set_config(…, true) ends with the transaction"
    conn.execute(queries.fetch_jobs, fetch_params([], queue="alpha", demand=1))
    assert conn.execute(show).fetchone() == ("on",), "synchronous: the connection's setting stands"
    conn.rollback()


def test_runtime_passes_synchronous_acks_to_its_producers_and_completer(dsn: str, schema: str) -> None:
    durable = Runtime(dsn, schema=schema, queues={"alpha": 1}, synchronous_acks=True)
    fast = Runtime(dsn, schema=schema, queues={"alpha": 1})
    assert (durable.completer.async_commit, fast.completer.async_commit) == (False, True)
