"""The execution record shared by the chaos suite's and the system tests' worker processes.

Every completed execution is recorded as a row of ``executions`` in the schema under test,
written by the worker itself before it returns, so that table says what really ran, where and how
often, even when the runtime never got to acknowledge it. The primary key makes a retried insert
idempotent: when a connection dies after the server committed the row but before the client
heard, the retry must not look like a second execution. Whoever starts the processes passes the
database and the schema in :data:`DSN_VARIABLE` and :data:`SCHEMA_VARIABLE`, and creates the
table first (:data:`EXECUTIONS_DDL`). Jobs that must not start before others have finished (workflow
steps, batch callbacks) check as they start and write what they found unfinished to
``early_runs`` (:data:`EARLY_RUNS_DDL`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

import pgqueue

__all__ = [
    "DSN_VARIABLE",
    "EARLY_RUNS_DDL",
    "EXECUTIONS_DDL",
    "SCHEMA_VARIABLE",
    "Recorded",
    "record_early_run",
    "record_execution",
    "run_on_record_connection",
]

DSN_VARIABLE = "EXECUTIONS_DSN"
SCHEMA_VARIABLE = "EXECUTIONS_SCHEMA"

#: Created in the schema before the processes start (format with the schema identifier).
EXECUTIONS_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {}.executions (job_id bigint NOT NULL, attempt int NOT NULL,"
    " node text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " PRIMARY KEY (job_id, attempt, pid))"
)

#: Where a workflow step or a batch callback that started too soon writes what it found: the
#: dependency (or batch) it saw unfinished and that one's state (format with the schema identifier).
EARLY_RUNS_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {}.early_runs (job_id bigint NOT NULL, attempt int NOT NULL,"
    " waited_for text NOT NULL, seen text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)

# How long a worker keeps trying to record while the database is away (restarted, or its
# connection terminated) before it gives up and lets the attempt fail.
_RECORD_DEADLINE = 120.0
_local = threading.local()
_T = TypeVar("_T")


def _connection() -> psycopg.Connection[Any]:
    # One autocommit connection per worker thread: no pool to contend for, no transaction left open.
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def run_on_record_connection(work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
    """``work(conn)`` on this thread's autocommit connection, retried through a database outage."""
    deadline = time.monotonic() + _RECORD_DEADLINE
    while True:
        try:
            return work(_connection())
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def record_execution(job: pgqueue.Job) -> None:
    """Insert this attempt's ``executions`` row, reconnecting through a database outage."""
    statement = sql.SQL(
        "INSERT INTO {} (job_id, attempt, node, pid) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(os.environ[SCHEMA_VARIABLE], "executions"))
    node = job.attempted_by[0] if job.attempted_by else ""
    run_on_record_connection(lambda conn: conn.execute(statement, (job.id, job.attempt, node, os.getpid())))


def record_early_run(job: pgqueue.Job, waited_for: str, seen: str) -> None:
    """Write that ``job`` started while ``waited_for`` (a dependency, a batch) was still ``seen``."""
    statement = sql.SQL("INSERT INTO {} (job_id, attempt, waited_for, seen) VALUES (%s, %s, %s, %s)").format(
        sql.Identifier(os.environ[SCHEMA_VARIABLE], "early_runs")
    )
    run_on_record_connection(lambda conn: conn.execute(statement, (job.id, job.attempt, waited_for, seen)))


class Recorded(pgqueue.Worker, abstract=True):
    """A worker whose attempts are retried at once: a base for workers that record."""

    def backoff(self, job: pgqueue.Job) -> float:
        # A failed attempt (the database went away mid-job) is retried at once, not in 15 s.
        return 0.1
