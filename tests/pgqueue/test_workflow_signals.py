"""Signals and timers: a step that waits for a named signal, with a payload and a timeout."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.store import queries_for
from pgqueue.testing import drain_queue
from pgqueue.workflow import PARKED
from tests.helpers import wait_until

from .workers import Outcomes


def _state(conn: psycopg.Connection[Any], schema: str, job_id: int) -> tuple[str, datetime, dict[str, Any]]:
    conn.commit()
    row = conn.execute(
        sql.SQL("SELECT state::text, scheduled_at, meta FROM {} WHERE id = %s").format(
            sql.Identifier(schema, "jobs")
        ),
        (job_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _job(conn: psycopg.Connection[Any], schema: str, job_id: int) -> pgqueue.Job:
    conn.commit()
    return pgqueue.get_job(conn, job_id, schema=schema)


def _approval(timeout: float | None = None, deps: list[str] | None = None) -> pgqueue.Workflow:
    flow = pgqueue.Workflow()
    for dep in deps or []:
        flow.add(dep, Outcomes.new({}))
    flow.add("ship", Outcomes.new({}), deps=deps or [], wait_for_signal="approved:7", signal_timeout=timeout)
    return flow


def test_a_step_waits_for_its_signal_and_reads_the_payload(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    jobs = pgqueue.insert_workflow(conn, _approval(), schema=schema)
    conn.commit()
    assert drain_queue(dsn, "alpha", schema=schema, with_scheduled=True).success == 0
    assert _state(conn, schema, jobs["ship"].id)[:2] == ("scheduled", PARKED)

    released = pgqueue.signal(conn, "approved:7", {"by": "ada"}, schema=schema)
    conn.commit()

    assert released == 1
    assert _state(conn, schema, jobs["ship"].id)[0] == "available"
    received = pgqueue.received_signal(_job(conn, schema, jobs["ship"].id))
    assert received is not None
    assert (received.name, received.payload) == ("approved:7", {"by": "ada"})
    assert drain_queue(dsn, "alpha", schema=schema).success == 1


def test_a_signal_sent_before_the_wait_is_kept(conn: psycopg.Connection[Any], schema: str) -> None:
    assert pgqueue.signal(conn, "approved:7", [1, 2], schema=schema) == 0
    conn.commit()

    jobs = pgqueue.insert_workflow(conn, _approval(), schema=schema)
    conn.commit()

    assert jobs["ship"].state == "available"
    received = pgqueue.received_signal(_job(conn, schema, jobs["ship"].id))
    assert received is not None
    assert received.payload == [1, 2]


def test_a_signal_rolled_back_with_its_transaction_releases_nothing(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    jobs = pgqueue.insert_workflow(conn, _approval(), schema=schema)
    conn.commit()
    pgqueue.signal(conn, "approved:7", schema=schema)
    conn.rollback()
    assert _state(conn, schema, jobs["ship"].id)[0] == "scheduled"


def test_a_signal_sent_from_sql_releases_the_step(conn: psycopg.Connection[Any], schema: str) -> None:
    jobs = pgqueue.insert_workflow(conn, _approval(), schema=schema)
    conn.commit()

    row = conn.execute(
        sql.SQL("SELECT {}(%s, %s::jsonb)").format(sql.Identifier(schema, "pgqueue_signal")),
        ("approved:7", '{"from": "sql"}'),
    ).fetchone()
    conn.commit()

    assert row == (1,)
    assert _state(conn, schema, jobs["ship"].id)[2]["signal"]["payload"] == {"from": "sql"}


def test_a_signal_waits_for_the_dependencies_too(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    jobs = pgqueue.insert_workflow(conn, _approval(deps=["pack"]), schema=schema)
    conn.commit()
    pgqueue.signal(conn, "approved:7", schema=schema)
    conn.commit()
    assert _state(conn, schema, jobs["ship"].id)[0] == "scheduled"

    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)

    assert _state(conn, schema, jobs["ship"].id)[0] == "completed"


def test_a_step_whose_signal_times_out_runs_at_the_deadline_without_it(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    before = datetime.now(UTC)
    jobs = pgqueue.insert_workflow(conn, _approval(timeout=3600), schema=schema)
    conn.commit()
    state, scheduled_at, _ = _state(conn, schema, jobs["ship"].id)
    assert state == "scheduled"
    assert before + timedelta(seconds=3599) < scheduled_at < datetime.now(UTC) + timedelta(seconds=3601)

    # The stager reaches the deadline: the step runs, and sees no signal.
    conn.execute(
        queries_for(schema).stage_jobs,
        {"until": scheduled_at, "queue": None, "limit": 100, "channel": "x", "notify": False},
    )
    job = _job(conn, schema, jobs["ship"].id)
    assert job.state == "available"
    assert pgqueue.received_signal(job) is None
    # A signal arriving after the deadline changes nothing.
    assert pgqueue.signal(conn, "approved:7", schema=schema) == 0
    conn.commit()
    assert pgqueue.received_signal(_job(conn, schema, jobs["ship"].id)) is None
    assert drain_queue(dsn, "alpha", schema=schema).success == 1


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("", None, "signal name must be a string of 1 to 255 characters, got ''"),
        ("x" * 256, None, "1 to 255 characters"),
        ("ok", {"at": datetime.now(UTC)}, "signal 'ok': payload must be JSON-serialisable"),
        ("ok", float("nan"), "payload must be JSON-serialisable"),
    ],
)
def test_bad_signals_are_refused_before_anything_is_written(
    conn: psycopg.Connection[Any], schema: str, name: str, payload: Any, message: str
) -> None:
    with pytest.raises(pgqueue.SignalError) as raised:
        pgqueue.signal(conn, name, payload, schema=schema)
    assert message in str(raised.value)
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "pgqueue_workflow_signals"))
    ).fetchone()
    assert row == (0,)


def test_sql_refuses_an_empty_signal_name(conn: psycopg.Connection[Any], schema: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="signal name must be 1 to 255"):
        conn.execute(sql.SQL("SELECT {}('')").format(sql.Identifier(schema, "pgqueue_signal")))


@pytest.mark.anyio
async def test_asignal_releases_a_step_inserted_by_ainsert_workflow(
    aconn: psycopg.AsyncConnection[Any], schema: str
) -> None:
    jobs = await pgqueue.ainsert_workflow(aconn, _approval(), schema=schema)
    await aconn.commit()

    assert await pgqueue.asignal(aconn, "approved:7", {"ok": True}, schema=schema) == 1
    await aconn.commit()

    deps = await pgqueue.adependencies(aconn, jobs["ship"], schema=schema)
    assert deps == []
    job = await pgqueue.aget_job(aconn, jobs["ship"].id, schema=schema)
    assert job.state == "available"


def test_a_signal_sent_while_a_waiting_step_is_being_inserted_is_not_missed(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    with psycopg.connect(dsn) as inserting, psycopg.connect(dsn) as signalling:
        jobs = pgqueue.insert_workflow(inserting, _approval(), schema=schema)
        # The signal waits for the insert, which holds the name's lock, then finds its wait.
        result: list[int] = []
        thread = threading.Thread(
            target=lambda: (
                result.append(pgqueue.signal(signalling, "approved:7", schema=schema)),
                signalling.commit(),
            ),
            daemon=True,
        )
        thread.start()
        wait_until(lambda: _waiting_on_lock(conn, signalling), message="the signal never waited")
        inserting.commit()
        thread.join(10)
        assert not thread.is_alive()

    assert result == [1]
    assert _state(conn, schema, jobs["ship"].id)[0] == "available"


def _waiting_on_lock(conn: psycopg.Connection[Any], other: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (other.info.backend_pid,)
    ).fetchone()
    conn.commit()
    return bool(row and row[0])
