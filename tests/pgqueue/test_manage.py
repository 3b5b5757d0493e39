"""Managing jobs that exist: cancel, retry, delete, update, get and query, with Oban's state rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.store import channel_name

from .workers import Ok, UniqueForever


def insert_in_state(conn: psycopg.Connection[Any], schema: str, state: str, **columns: Any) -> pgqueue.Job:
    job = pgqueue.insert(conn, Ok.new({"state": state}), schema=schema)
    values = {"state": state, **columns}
    if state == "executing":
        values.setdefault("attempt", 1)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in values.items()
    )
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE id = %s").format(sql.Identifier(schema, "jobs"), assignments),
        (job.id,),
    )
    conn.commit()
    return job


def state_of(conn: psycopg.Connection[Any], schema: str, job: pgqueue.Job) -> str:
    found = pgqueue.get_job(conn, job.id, schema=schema)
    conn.commit()
    return found.state if found else "deleted"


def test_cancel_unfinished_jobs_and_leave_finished_ones(conn: psycopg.Connection[Any], schema: str) -> None:
    scheduled = insert_in_state(conn, schema, "scheduled")
    retryable = insert_in_state(conn, schema, "retryable")
    completed = insert_in_state(conn, schema, "completed")

    assert pgqueue.cancel_job(conn, scheduled, schema=schema)
    assert pgqueue.cancel_job(conn, retryable.id, schema=schema)
    assert not pgqueue.cancel_job(conn, completed, schema=schema)
    conn.commit()

    for job in (scheduled, retryable):
        again = pgqueue.get_job(conn, job.id, schema=schema)
        assert again is not None
        assert (again.state, again.errors) == ("cancelled", [])
        assert again.cancelled_at is not None
    assert pgqueue.get_job(conn, completed.id, schema=schema).cancelled_at is None  # type: ignore[union-attr]


def test_cancel_all_counts_what_changed(conn: psycopg.Connection[Any], schema: str) -> None:
    for state in ("scheduled", "retryable", "completed", "executing"):
        insert_in_state(conn, schema, state)
    assert pgqueue.cancel_all_jobs(conn, schema=schema) == 3


def test_cancelling_an_executing_job_records_why_and_signals_its_node(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    job = insert_in_state(conn, schema, "executing")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema, "signal"))))
        assert pgqueue.cancel_job(conn, job, schema=schema)
        conn.commit()
        (note,) = list(listener.notifies(timeout=2, stop_after=1))
    # The notification only names a row of the signals table; the row says what to do.
    signal_id = json.loads(note.payload)["id"]
    row = conn.execute(
        sql.SQL("SELECT action, params FROM {} WHERE id = %s").format(
            sql.Identifier(schema, "pgqueue_signals")
        ),
        (signal_id,),
    ).fetchone()
    assert row == ("pkill", {"job_ids": [job.id]})
    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    assert again.state == "cancelled"
    assert len(again.errors) == 1


def test_retry_rules(conn: psycopg.Connection[Any], schema: str) -> None:
    discarded = insert_in_state(conn, schema, "discarded", attempt=20, max_attempts=20)
    completed = insert_in_state(conn, schema, "completed", attempt=1)
    available = insert_in_state(conn, schema, "available")
    retryable = insert_in_state(conn, schema, "retryable", attempt=1)
    executing = insert_in_state(conn, schema, "executing")

    assert pgqueue.retry_job(conn, discarded, schema=schema)
    conn.commit()
    again = pgqueue.get_job(conn, discarded.id, schema=schema)
    assert again is not None
    assert (again.state, again.max_attempts, again.discarded_at) == ("available", 21, None)

    assert not pgqueue.retry_job(conn, executing, schema=schema)
    assert (
        pgqueue.retry_all_jobs(
            conn, pgqueue.JobFilter(ids=[completed.id, available.id, retryable.id]), schema=schema
        )
        == 2
    )
    conn.commit()
    assert {state_of(conn, schema, j) for j in (completed, available, retryable)} == {"available"}
    assert state_of(conn, schema, executing) == "executing"
    assert pgqueue.get_job(conn, completed.id, schema=schema).max_attempts == 20  # type: ignore[union-attr]


def test_retrying_a_finished_unique_job_whose_key_was_taken_gives_the_key_up(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    old = pgqueue.insert(conn, UniqueForever.new({"k": 1}), schema=schema)
    conn.execute(
        sql.SQL("UPDATE {} SET state = 'cancelled' WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        (old.id,),
    )
    new = pgqueue.insert(conn, UniqueForever.new({"k": 1}), schema=schema)
    assert not new.conflict
    conn.commit()

    assert pgqueue.retry_job(conn, old, schema=schema)
    conn.commit()
    assert state_of(conn, schema, old) == "available"
    assert pgqueue.insert(conn, UniqueForever.new({"k": 1}), schema=schema).id == new.id


def test_delete_never_touches_executing_jobs(conn: psycopg.Connection[Any], schema: str) -> None:
    jobs = [insert_in_state(conn, schema, s) for s in ("available", "scheduled", "executing")]
    assert pgqueue.delete_all_jobs(conn, schema=schema) == 2
    conn.commit()
    assert [state_of(conn, schema, j) for j in jobs] == ["deleted", "deleted", "executing"]
    assert not pgqueue.delete_job(conn, jobs[2], schema=schema)


def test_update_by_job_or_id_and_with_a_function(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(conn, Ok.new({}, tags=["a"]), schema=schema)
    conn.commit()
    updated = pgqueue.update_job(conn, job, {"tags": ["tag"], "priority": 5}, schema=schema)
    assert (updated.tags, updated.priority) == (["tag"], 5)
    updated = pgqueue.update_job(conn, job.id, lambda j: {"tags": ["new", *j.tags]}, schema=schema)
    assert updated.tags == ["new", "tag"]


def test_update_scheduled_at_makes_a_waiting_job_scheduled(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(conn, Ok.new({}), schema=schema)
    at = datetime.now(UTC) + timedelta(minutes=5)
    updated = pgqueue.update_job(conn, job, {"scheduled_at": at}, schema=schema)
    assert (updated.state, updated.scheduled_at) == ("scheduled", at)


def test_update_errors_name_the_problem(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(conn, Ok.new({}), schema=schema)
    with pytest.raises(pgqueue.JobNotFoundError, match="no job with id 0"):
        pgqueue.update_job(conn, 0, {"priority": 1}, schema=schema)
    with pytest.raises(pgqueue.ConfigError, match="can't update 'state'"):
        pgqueue.update_job(conn, job, {"state": "completed"}, schema=schema)
    with pytest.raises(pgqueue.ConfigError, match="priority must be an integer 0..9"):
        pgqueue.update_job(conn, job, {"priority": 12}, schema=schema)


def test_update_refuses_a_job_another_transaction_holds(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    job = pgqueue.insert(conn, Ok.new({}), schema=schema)
    conn.commit()
    with psycopg.connect(dsn) as other:
        other.execute(
            sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(schema, "jobs")),
            (job.id,),
        )
        with pytest.raises(pgqueue.JobLockedError):
            pgqueue.update_job(conn, job, {"priority": 1}, schema=schema)


def test_filters_select_by_every_criterion(conn: psycopg.Connection[Any], schema: str) -> None:
    a = pgqueue.insert(
        conn, Ok.new({"user": {"id": 1}}, queue="q1", tags=["x", "y"], priority=1), schema=schema
    )
    b = pgqueue.insert(conn, Ok.new({"user": {"id": 2}}, queue="q2", meta={"m": True}), schema=schema)

    def ids(**criteria: Any) -> list[int]:
        return sorted(j.id for j in pgqueue.all_jobs(conn, pgqueue.JobFilter(**criteria), schema=schema))

    assert ids() == [a.id, b.id]
    assert ids(queue="q1") == [a.id]
    assert ids(queue=["q1", "q2"]) == [a.id, b.id]
    assert ids(state="available", worker=Ok.name) == [a.id, b.id]
    assert ids(tags=["y"]) == [a.id]
    assert ids(args={"user": {"id": 2}}) == [b.id]
    assert ids(meta={"m": True}) == [b.id]
    assert ids(priority=[1]) == [a.id]
    assert ids(ids=[b.id], queue="q1") == []


@pytest.mark.anyio
async def test_async_twins(aconn: psycopg.AsyncConnection[Any], schema: str) -> None:
    job = await pgqueue.ainsert(aconn, Ok.new({}), schema=schema)
    assert (await pgqueue.aget_job(aconn, job.id, schema=schema)) == job
    assert len(await pgqueue.aall_jobs(aconn, schema=schema)) == 1
    assert (await pgqueue.aupdate_job(aconn, job, {"priority": 4}, schema=schema)).priority == 4
    assert await pgqueue.acancel_job(aconn, job, schema=schema)
    assert await pgqueue.aretry_job(aconn, job, schema=schema)
    assert await pgqueue.acancel_all_jobs(aconn, schema=schema) == 1
    assert await pgqueue.aretry_all_jobs(aconn, schema=schema) == 1
    assert await pgqueue.adelete_job(aconn, job, schema=schema)
    assert await pgqueue.adelete_all_jobs(aconn, schema=schema) == 0
