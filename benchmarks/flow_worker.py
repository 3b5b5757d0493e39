"""Workers ``benchmarks.flow`` runs through ``python -m pgqueue start``.

``Noop`` does nothing (the drains). ``Paced`` sleeps ``args["ms"]`` and marks its start and end by
the database clock in ``flow_marks`` (exactness); ``Tenant`` sleeps ``args["ms"]`` (fairness). The
schema comes from ``PGQUEUE_BENCH_SCHEMA``, the database from ``DATABASE_URL``.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import psycopg
from psycopg import sql

import pgqueue

_connection: psycopg.AsyncConnection[Any] | None = None
_lock: anyio.Lock | None = None


async def _mark(statement: str, params: tuple[Any, ...]) -> None:
    global _connection, _lock
    if _lock is None:
        _lock = anyio.Lock()
    async with _lock:
        if _connection is None or _connection.closed:
            _connection = await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True)
        table = sql.Identifier(os.environ["PGQUEUE_BENCH_SCHEMA"], "flow_marks")
        await _connection.execute(sql.SQL(statement).format(table), params)


class Noop(pgqueue.Worker, queue="bench", name="bench.FlowNoop"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


class Paced(pgqueue.Worker, queue="paced", name="bench.Paced"):
    async def perform(self, job: pgqueue.Job) -> None:
        await _mark("INSERT INTO {} (job_id, started_at) VALUES (%s, clock_timestamp())", (job.id,))
        await anyio.sleep(job.args["ms"] / 1000)
        await _mark("UPDATE {} SET ended_at = clock_timestamp() WHERE job_id = %s", (job.id,))


class Tenant(pgqueue.Worker, queue="tenants", name="bench.Tenant", partition_by=["args.tenant"]):
    async def perform(self, job: pgqueue.Job) -> None:
        await anyio.sleep(job.args["ms"] / 1000)
