"""Workers the process-pool tests run in worker processes (``workers=["tests.pgqueue.process_workers"]``).

Each records the attempts it starts and finishes in the ``runs`` table of the schema under test,
with the pid and the database's clock: the evidence of which process ran what, and when. The
test passes the database and schema in :data:`DSN_VARIABLE` and :data:`SCHEMA_VARIABLE`; the
worker processes inherit them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

import pgqueue

DSN_VARIABLE = "PROCESS_TESTS_DSN"
SCHEMA_VARIABLE = "PROCESS_TESTS_SCHEMA"
#: created in the schema before the runtime starts (format with the schema identifier)
RUNS_DDL = sql.SQL(
    "CREATE TABLE {}.runs (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
    " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,"
    " PRIMARY KEY (job_id, attempt))"
)

_connection: psycopg.Connection[Any] | None = None


def _execute(statement: str, job: pgqueue.Job) -> None:
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True)
    table = sql.Identifier(os.environ[SCHEMA_VARIABLE], "runs")
    _connection.execute(sql.SQL(statement).format(table), (job.id, job.attempt, os.getpid()))


def record_start(job: pgqueue.Job) -> None:
    _execute("INSERT INTO {} (job_id, attempt, pid) VALUES (%s, %s, %s)", job)


def record_finish(job: pgqueue.Job) -> None:
    _execute(
        "UPDATE {} SET finished_at = clock_timestamp() WHERE job_id = %s AND attempt = %s AND pid = %s", job
    )


def spin(cpu_seconds: float) -> int:
    """Busy-loop until this thread has used ``cpu_seconds`` of CPU; returns the loop count."""
    deadline = time.thread_time() + cpu_seconds
    loops = 0
    while time.thread_time() < deadline:
        loops += 1
    return loops


class Spin(pgqueue.Worker, queue="cpu", max_attempts=3):
    """Burns ``args["cpu"]`` seconds of CPU (``args["retry_cpu"]`` on later attempts), recording it."""

    def perform(self, job: pgqueue.Job) -> dict[str, int]:
        record_start(job)
        seconds = job.args["cpu"] if job.attempt == 1 else job.args.get("retry_cpu", job.args["cpu"])
        spin(seconds)
        record_finish(job)
        return {"pid": os.getpid()}

    def timeout(self, job: pgqueue.Job) -> float | None:
        return job.args.get("timeout")

    def backoff(self, job: pgqueue.Job) -> float:
        return 0.0  # retry at once: the tests watch the next attempt


class Forever(pgqueue.Worker, queue="cpu", max_attempts=3):
    """Records its start, then loops forever without ever yielding: only killing it stops it."""

    def perform(self, job: pgqueue.Job) -> None:
        record_start(job)
        while True:
            pass

    def timeout(self, job: pgqueue.Job) -> float | None:
        return job.args.get("timeout")

    def backoff(self, job: pgqueue.Job) -> float:
        return 3600.0


class Outcome(pgqueue.Worker, queue="cpu", max_attempts=5):
    """Ends as ``args["end"]`` says; prints on the way, which must not disturb the pool."""

    def perform(self, job: pgqueue.Job) -> Any:
        print("a worker writing to stdout", job.id)
        sys.stdout.flush()
        end = job.args["end"]
        if end == "raise":
            raise ValueError(f"bad value {job.args.get('value')!r}")
        if end == "snooze":
            return pgqueue.Snooze(120)
        if end == "cancel":
            raise pgqueue.Cancel("not wanted")
        if end == "discard":
            return pgqueue.Discard({"why": "broken"})
        if end == "error":
            return pgqueue.Error("try again")
        if end == "unjsonable":
            return object()
        at = job.attempted_at.isoformat() if job.attempted_at else None
        return {"pid": os.getpid(), "args": job.args, "attempted_by": job.attempted_by, "at": at}

    def backoff(self, job: pgqueue.Job) -> float:
        return 3600.0
