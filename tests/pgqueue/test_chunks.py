"""Chunks: jobs performed together, up to chunk_size at once or after chunk_timeout, acked together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.runtime import Runtime

from ..helpers import await_until

pytestmark = pytest.mark.anyio

CHUNKS: list[list[int]] = []


class Sum(pgqueue.ChunkWorker, queue="chunks", chunk_size=5, chunk_timeout=0.3):
    async def perform_chunk(self, jobs: list[pgqueue.Job]) -> Mapping[int, Any]:
        CHUNKS.append([job.args["n"] for job in jobs])
        outcomes: dict[int, Any] = {}
        for job in jobs:
            n = job.args["n"]
            if n == 13:
                outcomes[job.id] = pgqueue.Cancel("unlucky")
            elif n == 7:
                outcomes[job.id] = ValueError("seven")
            else:
                outcomes[job.id] = n * 10
        return outcomes


class Broken(pgqueue.ChunkWorker, queue="chunks", chunk_size=3, chunk_timeout=0.2, max_attempts=1):
    def perform_chunk(self, jobs: list[pgqueue.Job]) -> None:
        raise RuntimeError("the provider is down")


def rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sql.SQL(
                    "SELECT (args ->> 'n')::int, state::text, result, completed_at, errors -> -1 ->> 'error'"
                    " FROM {} ORDER BY id"
                ).format(sql.Identifier(schema, "jobs"))
            ).fetchall()
        ]


def finished(dsn: str, schema: str, count: int) -> bool:
    return (
        sum(1 for row in rows(dsn, schema) if row[1] in ("completed", "discarded", "cancelled", "retryable"))
        == count
    )


async def test_jobs_are_performed_in_chunks_and_acked_together(dsn: str, schema: str) -> None:
    CHUNKS.clear()
    with psycopg.connect(dsn) as conn:
        pgqueue.insert_all(conn, [Sum.new({"n": n}) for n in range(12)] + [Sum.new({"n": 13})], schema=schema)
    async with Runtime(dsn, schema=schema, queues={"chunks": 10}, plugins=[], poll_interval=30.0):
        await await_until(lambda: finished(dsn, schema, 13), timeout=20)
    # Up to five at once; the last, short chunk ran when its timeout passed.
    assert sorted(len(chunk) for chunk in CHUNKS) == [3, 5, 5]
    assert sorted(n for chunk in CHUNKS for n in chunk) == [*range(12), 13]
    found = {n: (state, result, error) for n, state, result, _, error in rows(dsn, schema)}
    assert found[3] == ("completed", 30, None)
    assert found[13][0] == "cancelled"
    assert found[7][0] == "retryable"
    assert found[7][2] is not None
    assert "ValueError: seven" in found[7][2]
    # The jobs of a chunk finish together: their acks land in one statement (one transaction time).
    completed_at = {n: at for n, state, _, at, _ in rows(dsn, schema) if state == "completed"}
    for chunk in CHUNKS:
        assert len({completed_at[n] for n in chunk if n in completed_at}) == 1


async def test_a_chunk_that_raises_fails_each_of_its_jobs(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn:
        jobs = pgqueue.insert_all(conn, [Broken.new({"n": n}) for n in range(3)], schema=schema)
    async with Runtime(dsn, schema=schema, queues={"chunks": 5}, plugins=[], poll_interval=30.0):
        for job in jobs:
            with pytest.raises(pgqueue.JobFailedError, match="the provider is down"):
                await pgqueue.await_job(dsn, job, timeout=20, schema=schema)


async def test_chunk_options_are_checked_when_the_class_is_defined() -> None:
    with pytest.raises(pgqueue.ConfigError, match="chunk_size must be an integer 1..10000, got 0"):

        class Empty(pgqueue.ChunkWorker, chunk_size=0):
            async def perform_chunk(self, jobs: list[pgqueue.Job]) -> None: ...

    with pytest.raises(pgqueue.ConfigError, match="chunk_timeout must be seconds"):

        class Never(pgqueue.ChunkWorker, chunk_timeout=-1):
            async def perform_chunk(self, jobs: list[pgqueue.Job]) -> None: ...

    with pytest.raises(pgqueue.ConfigError, match="defines perform_chunk"):

        class Confused(pgqueue.ChunkWorker):
            async def perform(self, job: pgqueue.Job) -> None: ...

    await anyio.lowlevel.checkpoint()
