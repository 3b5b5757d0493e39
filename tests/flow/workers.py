"""Workers the flow-control tests run, in the test process or in node processes.

``Mark`` records when its ``perform`` started and ended, by the database clock (one clock for
every process), in the test schema's ``flow_marks`` table, then sleeps ``args["seconds"]``
between the two marks. The evidence of every limit test is that table and the jobs table.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import psycopg
from psycopg import sql

import pgqueue

DSN_VARIABLE = "PGQUEUE_FLOW_DSN"
SCHEMA_VARIABLE = "PGQUEUE_FLOW_SCHEMA"
MARKS_DDL = """
CREATE TABLE flow_marks (
    job_id     bigint      PRIMARY KEY,
    node       text        NOT NULL,
    partition  text,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz
)
"""

_connection: psycopg.AsyncConnection[Any] | None = None
_lock: anyio.Lock | None = None


async def _execute(statement: sql.Composable, params: tuple[Any, ...]) -> None:
    global _connection, _lock
    if _lock is None:
        _lock = anyio.Lock()
    async with _lock:
        if _connection is None or _connection.closed:
            _connection = await psycopg.AsyncConnection.connect(os.environ[DSN_VARIABLE], autocommit=True)
        await _connection.execute(statement, params)


def _marks() -> sql.Identifier:
    return sql.Identifier(os.environ[SCHEMA_VARIABLE], "flow_marks")


class Mark(pgqueue.Worker, queue="limited", max_attempts=3):
    """Marks its start, sleeps ``args["seconds"]`` (``args["rescued_seconds"]`` once rescued),
    marks its end (a second start of a rescued job replaces the first's mark)."""

    async def perform(self, job: pgqueue.Job) -> None:
        node = job.attempted_by[0] if job.attempted_by else "?"
        partition = job.meta.get("partition_key") if isinstance(job.meta, dict) else None
        await _execute(
            sql.SQL(
                "INSERT INTO {} (job_id, node, partition, started_at) VALUES (%s, %s, %s, clock_timestamp()) "
                "ON CONFLICT (job_id) DO UPDATE SET node = excluded.node, started_at = excluded.started_at"
            ).format(_marks()),
            (job.id, node, partition),
        )
        seconds = job.args.get("seconds", 0)
        if isinstance(job.meta, dict) and job.meta.get("rescued"):
            seconds = job.args.get("rescued_seconds", seconds)
        await anyio.sleep(float(seconds))
        await _execute(
            sql.SQL("UPDATE {} SET ended_at = clock_timestamp() WHERE job_id = %s").format(_marks()),
            (job.id,),
        )
