"""Workers the chaos suite's ``python -m pgqueue start`` processes load (``--workers chaos.workers``).

Every completed execution is recorded as a row of ``executions`` in the scenario's schema, written
by the worker itself before it returns, so that table says what really ran, where and how often,
even when the runtime never got to acknowledge it (the pattern of ``tests/system/workers.py``).
The primary key makes a retried insert idempotent: when a connection dies after the server
committed the row but before the client heard, the retry must not look like a second execution.
The suite passes the database and the schema in :data:`DSN_VARIABLE` and :data:`SCHEMA_VARIABLE`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

import pgqueue

__all__ = [
    "DSN_VARIABLE",
    "EXECUTIONS_DDL",
    "SCHEMA_VARIABLE",
    "Busy",
    "Failing",
    "Long",
    "Snoozer",
    "record_execution",
]

DSN_VARIABLE = "CHAOS_DSN"
SCHEMA_VARIABLE = "CHAOS_SCHEMA"

#: Created in each scenario's schema before its processes start (format with the schema identifier).
EXECUTIONS_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {}.executions (job_id bigint NOT NULL, attempt int NOT NULL,"
    " node text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " PRIMARY KEY (job_id, attempt, pid))"
)

# How long a worker keeps trying to record while the database is away (restarted, or its
# connection terminated) before it gives up and lets the attempt fail.
_RECORD_DEADLINE = 120.0
_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    # One autocommit connection per worker thread: no pool to contend for, no transaction left open.
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def record_execution(job: pgqueue.Job) -> None:
    """Insert this attempt's ``executions`` row, reconnecting through a database outage."""
    statement = sql.SQL(
        "INSERT INTO {} (job_id, attempt, node, pid) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(os.environ[SCHEMA_VARIABLE], "executions"))
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


def _sleep(seconds: float) -> bool:
    """Sleep cooperatively; False when the runtime abandoned the attempt meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pgqueue.is_cancelled():
            return False
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return True


class _Recorded(pgqueue.Worker, abstract=True):
    def backoff(self, job: pgqueue.Job) -> float:
        # A failed attempt (the database went away mid-job) is retried at once, not in 15 s.
        return 0.1


class Busy(_Recorded):
    """Works ``args["ms"]`` milliseconds (default 0), records its execution and succeeds."""

    def perform(self, job: pgqueue.Job) -> None:
        if _sleep(float(job.args.get("ms", 0)) / 1000):
            record_execution(job)


class Long(_Recorded):
    """Works ``args["seconds"]`` (``args["rescued_seconds"]`` once rescued), then records.

    With ``args["stale_answer"]`` the attempt that was *not* rescued answers ``Cancel``: if the
    completer's fence ever let a frozen node's late ack through, the job would end cancelled
    instead of completed, which the rescue scenario would see.
    """

    def perform(self, job: pgqueue.Job) -> Any:
        rescued = bool(job.meta.get("rescued")) if isinstance(job.meta, dict) else False
        seconds = float(
            job.args.get("rescued_seconds", job.args["seconds"]) if rescued else job.args["seconds"]
        )
        if not _sleep(seconds):
            return None
        record_execution(job)
        if job.args.get("stale_answer") and not rescued:
            return pgqueue.Cancel(f"stale answer of attempt {job.attempt}; the fence must refuse it")
        return None


class Snoozer(_Recorded):
    """Snoozes on its first run (told apart by ``scheduled_at == inserted_at``), then records and succeeds."""

    def perform(self, job: pgqueue.Job) -> Any:
        if job.scheduled_at <= job.inserted_at:
            return pgqueue.Snooze(0.2)
        record_execution(job)
        return None


class Failing(pgqueue.Worker):
    """Always fails, with the default backoff: for jobs at the limits of ``max_attempts``."""

    def perform(self, job: pgqueue.Job) -> None:
        record_execution(job)
        raise RuntimeError(f"chaos: deliberate failure of attempt {job.attempt}")
