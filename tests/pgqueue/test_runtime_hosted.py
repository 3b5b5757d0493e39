"""The runtime on an application's event loop: started and stopped from different tasks.

A web framework calls its startup and shutdown hooks from whichever task it likes; the runtime's
parts run in a task of their own, so neither hook's task is ever inside the runtime's cancel scope.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.runtime import Runtime

from ..helpers import await_until

pytestmark = pytest.mark.anyio


class Hosted(pgqueue.Worker, queue="hosted"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


def completed(conn: psycopg.Connection[Any], schema: str) -> int:
    conn.rollback()
    return len(pgqueue.all_jobs(conn, pgqueue.JobFilter(state="completed"), schema=schema))


async def test_start_in_one_task_and_stop_in_another(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    runtime = Runtime(dsn, schema=schema, queues={"hosted": 2}, plugins=[], shutdown_grace_period=1)
    started = anyio.Event()

    async def startup() -> None:
        await runtime.start()
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(startup)
        await started.wait()
    # The task that started it has ended; the runtime runs on.
    assert runtime.started
    pgqueue.insert_all(conn, [Hosted.new({"i": i}) for i in range(5)], schema=schema)
    conn.commit()
    await await_until(lambda: completed(conn, schema) == 5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.stop)
    assert not runtime.started
    with psycopg.connect(dsn) as check:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "pgqueue_producers"))
        rows = check.execute(query).fetchone()
    assert rows == (0,)
