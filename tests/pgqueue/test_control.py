"""Queue control: commands are rows of the signals table, a notification is only a wake-up.

A role that can connect but not write the queue's tables can send any notification it likes (old
command payloads, replayed ids, ids from the future) and nothing changes. A node starts after the
newest signal there is, applies each once, picks up ids that commit out of order, polls when it
can't listen, and stops a cancelled job only once the database says it is cancelled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.control import SIGNAL_TOPIC
from pgqueue.notifier import PostgresNotifier
from pgqueue.runtime import Runtime
from pgqueue.store import channel_name, queries_for

from ..helpers import await_until

pytestmark = pytest.mark.anyio


class Hold(pgqueue.Worker, queue="ctl"):
    """Sleeps args.seconds (async, so it can be stopped)."""

    async def perform(self, job: pgqueue.Job) -> None:
        await anyio.sleep(job.args["seconds"])


class DeafNotifier(PostgresNotifier):
    """A notifier whose LISTEN never happens, as behind a transaction-mode pooler: it polls."""

    async def _listen(self, conn: psycopg.AsyncConnection[Any], channel: str) -> None:
        return None


@pytest.fixture
def make_runtime(dsn: str, schema: str) -> Any:
    def make(**options: Any) -> Runtime:
        defaults: dict[str, Any] = {
            "schema": schema,
            "queues": {"ctl": 5},
            "poll_interval": 30.0,
            "plugins": [],
            "shutdown_grace_period": 0.5,
        }
        return Runtime(dsn, **{**defaults, **options})

    return make


@pytest.fixture
def intruder(dsn: str) -> Iterator[str]:
    """The DSN of a LOGIN role with no rights beyond what PUBLIC has (it can connect)."""
    role = f"pgq_intruder_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            yield psycopg.conninfo.make_conninfo(dsn, user=role)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def signal_row(conn: psycopg.Connection[Any], schema: str, action: str, **fields: Any) -> int:
    """A signal written by the queue's role with plain SQL (as an operator or an old node might)."""
    params = {"queue": None, "node": None, "params": "{}", **fields}
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (action, queue, node, params) VALUES (%s, %s, %s, %s::jsonb) RETURNING id"
        ).format(sql.Identifier(schema, "pgqueue_signals")),
        (action, params["queue"], params["node"], params["params"]),
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def notify(dsn: str, schema: str, payloads: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (channel_name(schema, SIGNAL_TOPIC), payload))


def job_state(conn: psycopg.Connection[Any], schema: str, job_id: int) -> str:
    conn.rollback()
    job = pgqueue.get_job(conn, job_id, schema=schema)
    assert job is not None
    return job.state


async def test_a_role_that_can_only_connect_can_notify_but_steers_nothing(
    make_runtime: Any, conn: psycopg.Connection[Any], dsn: str, schema: str, intruder: str
) -> None:
    job = pgqueue.insert(conn, Hold.new({"seconds": 30}), schema=schema)
    conn.commit()
    async with make_runtime(node="web.1") as runtime:
        await await_until(lambda: runtime.check_queue("ctl")["running"] == [job.id])  # type: ignore[index]
        # Given commands the queue's role sent: a pause, then a resume
        await runtime.pause_queue("ctl")
        paused_id = runtime.control.last
        await runtime.resume_queue("ctl")
        before = runtime.check_all_queues()
        last = runtime.control.last
        heard: list[dict[str, Any]] = []
        runtime.notifier.subscribe(SIGNAL_TOPIC, heard.append)

        # When a role that can only connect sends every command there was, old and new
        everything = [
            {"action": "pause", "queue": "*"},
            {"action": "pause", "queue": "ctl", "node": "web.1"},
            {"action": "scale", "queue": "ctl", "limit": 10_000},
            {"action": "start", "queue": "intruder", "limit": 10_000},
            {"action": "stop", "queue": "ctl"},
            {"action": "pkill", "job_id": job.id},
            {"action": "pkill", "job_ids": [job.id]},
            {"id": paused_id},  # a replay of the pause
            {"id": last + 1},  # an id not written yet
            {"id": 2**62},
        ]
        payloads = [json.dumps(p) for p in everything]
        notify(intruder, schema, payloads)
        # (and it can't write a command itself)
        with psycopg.connect(intruder, autocommit=True) as conn_as_intruder:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn_as_intruder.execute(
                    sql.SQL("INSERT INTO {} (action, queue) VALUES ('pause', '*')").format(
                        sql.Identifier(schema, "pgqueue_signals")
                    )
                )
        await await_until(lambda: all(p in heard for p in everything), message=str(heard))
        await runtime.control.catch_up()

        # Then nothing changed: the queue runs as before, the job still runs, no queue started
        assert runtime.check_all_queues() == before
        assert [q["queue"] for q in before] == ["ctl"]
        assert not before[0]["paused"]
        assert before[0]["running"] == [job.id]
        assert job_state(conn, schema, job.id) == "executing"
        assert runtime.control.last == last


async def test_a_node_ignores_signals_older_than_itself(
    make_runtime: Any, conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    stale = signal_row(conn, schema, "pause", queue="*")
    async with make_runtime() as runtime:
        assert runtime.control.last == stale
        notify(dsn, schema, [json.dumps({"id": stale})])
        await runtime.control.catch_up()
        assert runtime.check_queue("ctl")["paused"] is False  # type: ignore[index]
        # while a new one is applied
        signal_row(conn, schema, "pause", queue="*")
        notify(dsn, schema, ["{}"])
        await await_until(lambda: runtime.check_queue("ctl")["paused"])  # type: ignore[index]


async def test_pkill_stops_a_job_only_once_the_database_says_it_is_cancelled(
    make_runtime: Any, conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    job = pgqueue.insert(conn, Hold.new({"seconds": 30}), schema=schema)
    conn.commit()
    async with make_runtime() as runtime:
        await await_until(lambda: runtime.check_queue("ctl")["running"] == [job.id])  # type: ignore[index]
        # Given a pkill row naming a job that is not cancelled
        signal_row(conn, schema, "pkill", params=json.dumps({"job_ids": [job.id]}))
        notify(dsn, schema, ["{}"])
        await runtime.control.catch_up()
        # Then the job keeps running, and nothing was written for it
        assert runtime.check_queue("ctl")["running"] == [job.id]  # type: ignore[index]
        assert job_state(conn, schema, job.id) == "executing"

        # When the job is cancelled in the database (by another client)
        assert pgqueue.cancel_job(conn, job, schema=schema)
        conn.commit()
        # Then the node stops it, and its own late ack is fenced out
        await await_until(lambda: runtime.check_queue("ctl")["running"] == [], timeout=5)  # type: ignore[index]
        await runtime.wait_idle()
    again = pgqueue.get_job(conn, job.id, schema=schema)
    assert again is not None
    assert again.state == "cancelled"
    assert [e["error"] for e in again.errors] == ["cancelled while executing"]


async def test_a_node_that_cannot_listen_polls_the_table(make_runtime: Any, dsn: str, schema: str) -> None:
    deaf = DeafNotifier(dsn, schema, ping_timeout=0.2)
    async with (
        make_runtime(node="deaf", notifier=deaf, poll_interval=0.2) as polling,
        make_runtime(node="hearing") as hearing,
    ):
        assert await deaf.wait_ready(5) == "polling"
        await hearing.pause_queue("ctl")
        assert hearing.check_queue("ctl")["paused"], "the sender applies it at once"  # type: ignore[index]
        await await_until(lambda: polling.check_queue("ctl")["paused"], timeout=5)  # type: ignore[index]
        await polling.scale_queue("ctl", 3, node="hearing")
        await await_until(lambda: hearing.check_queue("ctl")["limit"] == 3, timeout=5)  # type: ignore[index]
        assert polling.check_queue("ctl")["limit"] == 5  # type: ignore[index]


async def test_a_signal_committed_after_a_later_one_is_still_applied(
    make_runtime: Any, dsn: str, schema: str
) -> None:
    async with make_runtime() as runtime:
        with psycopg.connect(dsn) as late:
            # Given a transaction that takes a signal id and has not committed yet
            late.execute(
                queries_for(schema).signal_send,
                {
                    "action": "pause",
                    "queue": "ctl",
                    "node": None,
                    "params": "{}",
                    "channel": channel_name(schema, SIGNAL_TOPIC),
                },
            )
            # When a later signal commits first and is applied
            await runtime.scale_queue("ctl", 2)
            assert runtime.check_queue("ctl")["limit"] == 2  # type: ignore[index]
            assert not runtime.check_queue("ctl")["paused"]  # type: ignore[index]
            late.commit()
        # Then the earlier one is applied once it commits
        await await_until(lambda: runtime.check_queue("ctl")["paused"], timeout=5)  # type: ignore[index]


async def test_the_leader_forgets_old_signals(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    old = signal_row(conn, schema, "resume", queue="*")
    recent = signal_row(conn, schema, "resume", queue="*")
    conn.execute(
        sql.SQL("UPDATE {} SET inserted_at = %s WHERE id = %s").format(
            sql.Identifier(schema, "pgqueue_signals")
        ),
        (datetime.now(UTC) - timedelta(days=2), old),
    )
    conn.commit()

    def kept() -> list[int]:
        conn.rollback()
        rows = conn.execute(
            sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier(schema, "pgqueue_signals"))
        ).fetchall()
        return [int(r[0]) for r in rows]

    async with make_runtime() as runtime:
        await await_until(runtime.is_leader)
        runtime.control.wake()
        await await_until(lambda: kept() == [recent], timeout=5)
