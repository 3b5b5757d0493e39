"""Workers the system tests' runtime processes load with ``--workers tests.system.workers``.

Each records its completed executions (see :mod:`chaos.recording`, shared with the chaos suite).
"""

from __future__ import annotations

import os
import time

import psycopg
from psycopg import sql

import pgqueue
from chaos.recording import DSN_VARIABLE, EXECUTIONS_DDL, SCHEMA_VARIABLE, Recorded, record_execution

__all__ = [
    "DSN_VARIABLE",
    "EXECUTIONS_DDL",
    "SCHEMA_VARIABLE",
    "Record",
    "Sleep",
    "WorkflowStep",
    "record_execution",
]


class Record(Recorded):
    """Records its execution and succeeds: a no-op job as fast as the database allows."""

    def perform(self, job: pgqueue.Job) -> None:
        record_execution(job)


class Sleep(Recorded):
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


class WorkflowStep(Recorded):
    """A workflow step: checks that every job it depends on has completed (recording each that
    hasn't in ``early_runs``), sleeps ``args["seconds"]`` cooperatively, then records."""

    def perform(self, job: pgqueue.Job) -> None:
        schema = os.environ[SCHEMA_VARIABLE]
        with psycopg.connect(os.environ[DSN_VARIABLE], autocommit=True, connect_timeout=5) as conn:
            for dep in pgqueue.dependencies(conn, job, schema=schema):
                if dep.state != "completed":
                    conn.execute(
                        sql.SQL("INSERT INTO {} (job_id, dep_id, dep_state) VALUES (%s, %s, %s)").format(
                            sql.Identifier(schema, "early_runs")
                        ),
                        (job.id, dep.id, dep.state),
                    )
        deadline = time.monotonic() + float(job.args["seconds"])
        while time.monotonic() < deadline:
            if pgqueue.is_cancelled():
                return
            time.sleep(0.01)
        record_execution(job)
