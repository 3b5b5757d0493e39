"""Workers the system tests' runtime processes load with ``--workers tests.system.workers``.

Every completed execution is recorded as a row of ``executions`` in the test's schema, written by
the worker itself before it returns, so the table says what really ran, where and how often, even
when the runtime never got to acknowledge it. The test passes the database and the schema to the
process in :data:`DSN_VARIABLE` and :data:`SCHEMA_VARIABLE`, and creates the table first
(:data:`EXECUTIONS_DDL`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

import pgqueue

__all__ = ["DSN_VARIABLE", "EXECUTIONS_DDL", "SCHEMA_VARIABLE", "Record", "Sleep", "record_execution"]

DSN_VARIABLE = "PGQUEUE_TEST_DSN"
SCHEMA_VARIABLE = "PGQUEUE_TEST_SCHEMA"

#: Create it in the test's schema before starting a process (format with the schema identifier).
EXECUTIONS_DDL = sql.SQL(
    "CREATE TABLE {}.executions (job_id bigint NOT NULL, attempt int NOT NULL, node text NOT NULL,"
    " pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)

# How long a worker keeps trying to record while the database is away (restarted, or its
# connection terminated) before it gives up and lets the attempt fail.
_RECORD_DEADLINE = 60.0
_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    # One autocommit connection per worker thread: no pool to contend for, no transaction left open.
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def record_execution(job: pgqueue.Job) -> None:
    """Insert one ``executions`` row for this attempt, reconnecting through a database outage."""
    statement = sql.SQL("INSERT INTO {} (job_id, attempt, node, pid) VALUES (%s, %s, %s, %s)").format(
        sql.Identifier(os.environ[SCHEMA_VARIABLE], "executions")
    )
    node = job.attempted_by[0] if job.attempted_by else ""
    deadline = time.monotonic() + _RECORD_DEADLINE
    while True:
        try:
            _connection().execute(statement, (job.id, job.attempt, node, os.getpid()))
            return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class _Recorded(pgqueue.Worker, abstract=True):
    def backoff(self, job: pgqueue.Job) -> float:
        # A failed attempt (the database went away mid-job) is retried at once, not in 15 s.
        return 0.1


class Record(_Recorded):
    """Records its execution and succeeds: a no-op job as fast as the database allows."""

    def perform(self, job: pgqueue.Job) -> None:
        record_execution(job)


class Sleep(_Recorded):
    """Sleeps ``args["seconds"]`` (``args["rescued_seconds"]`` once rescued), then records.

    Sleeps cooperatively: when the runtime abandons the attempt (a cancel, a shutdown past the
    grace period) it returns without recording, since the attempt did not complete.
    """

    def perform(self, job: pgqueue.Job) -> None:
        seconds = job.args["seconds"]
        if job.meta.get("rescued"):
            seconds = job.args.get("rescued_seconds", seconds)
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            if pgqueue.is_cancelled():
                return
            time.sleep(0.01)
        record_execution(job)
