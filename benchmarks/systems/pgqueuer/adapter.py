"""Adapter for pgqueuer (PyPI ``pgqueuer``), driven by the benchmark runner.

As pgqueuer's quick start and its own ``pgq run`` do: one asyncpg connection wrapped in
``AsyncpgDriver``, the default ``durable`` schema (``Queries.install``), an async entrypoint, and
the uvloop event loop. Two worker settings are measured:

* ``bounded``: ``batch_size=C/2, max_concurrent_tasks=C`` (at C=10: batch 5, 10 in flight), the
  way to cap a worker at C jobs (``max_concurrent_tasks`` must be at least twice the batch);
* ``defaults``: ``QueueManager.run`` defaults, ``batch_size=10`` and no cap on jobs in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any, TypeVar

import asyncpg
import benchkit
import uvloop
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries

RECORDER = benchkit.Recorder()
ENTRYPOINT = "noop"
T = TypeVar("T")


def payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def run(coro_fn: Callable[[benchkit.Task], Awaitable[T]], task: benchkit.Task) -> T:
    async def main() -> T:
        return await coro_fn(task)

    return uvloop.run(main())


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="pgqueuer",
        version=version("pgqueuer"),
        enqueue_modes=[
            {"name": "single", "bulk": False, "description": "Queries.enqueue(entrypoint, payload): one job"},
            {"name": "bulk", "bulk": True, "description": "Queries.enqueue with lists (one UNNEST insert)"},
        ],
        variants=[
            {
                "name": "bounded",
                "scales": True,
                "settings": "batch_size=C/2, max_concurrent_tasks=C (C=10: 5/10), asyncpg, durable",
            },
            {
                "name": "defaults",
                "scales": False,
                "settings": "batch_size=10, max_concurrent_tasks=None (unbounded), asyncpg, durable",
            },
        ],
        latency_variant="bounded",
        done_sql="SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
        total_sql="SELECT count(*) FROM pgqueuer",
        notes=[
            "completion is logged through a buffer flushed every 0.1 s or every batch_size jobs",
            "event loop: uvloop, as `pgq run` uses",
        ],
    )


async def _setup(task: benchkit.Task) -> benchkit.Result:
    conn = await asyncpg.connect(task["dsn"])
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        preload = task.get("preload")
        if preload:
            count = int(preload["count"])
            await queries.enqueue([ENTRYPOINT] * count, [payload(s) for s in range(count)], [0] * count)
    finally:
        await conn.close()
    return {}


async def _enqueue(task: benchkit.Task) -> benchkit.Result:
    conn = await asyncpg.connect(task["dsn"])
    try:
        queries = Queries(AsyncpgDriver(conn))

        async def single(seq: int) -> None:
            await queries.enqueue(ENTRYPOINT, payload(seq))

        async def bulk(seqs: list[int]) -> None:
            await queries.enqueue([ENTRYPOINT] * len(seqs), [payload(s) for s in seqs], [0] * len(seqs))

        return await benchkit.enqueue_async(task, single, {"bulk": bulk})
    finally:
        await conn.close()


def worker_settings(variant: str, concurrency: int | None) -> dict[str, Any]:
    if variant == "bounded":
        if concurrency is None or concurrency < 2:
            raise ValueError("the bounded variant needs a concurrency of at least 2")
        return {"batch_size": concurrency // 2, "max_concurrent_tasks": concurrency}
    if variant == "defaults":
        return {}
    raise ValueError(f"unknown variant {variant!r}")


async def _work(task: benchkit.Task) -> benchkit.Result:
    concurrency = task.get("concurrency")
    settings = worker_settings(task["variant"], None if concurrency is None else int(concurrency))
    conn = await asyncpg.connect(task["dsn"])
    try:
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            RECORDER.record(json.loads(job.payload or b"{}")["seq"])

        runner = asyncio.create_task(pgq.run(**settings))
        await benchkit.hold(runner)
        pgq.shutdown.set()
        await runner
    finally:
        await conn.close()
    return RECORDER.result(bool(task.get("record_starts")))


def setup(task: benchkit.Task) -> benchkit.Result:
    return run(_setup, task)


def enqueue(task: benchkit.Task) -> benchkit.Result:
    return run(_enqueue, task)


def work(task: benchkit.Task) -> benchkit.Result:
    return run(_work, task)


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
