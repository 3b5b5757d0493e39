"""Adapter for oban-py (PyPI ``oban``, Python >= 3.12), driven by the benchmark runner.

As oban's README and CLI do: ``Oban.create_pool(dsn)`` (1-10 connections), the schema from
``oban.schema.install``, a ``@worker`` class with an async ``process``, ``Oban(pool=...,
queues={"default": C})`` with every other option at its default (leadership, stager 1 s, lifeline,
pruner, PostgreSQL notifier), and the uvloop event loop that ``oban start`` uses. The OSS tier
inserts and acknowledges jobs one statement at a time (bulk inserts and acks are Oban Pro).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any, TypeVar

import benchkit
import uvloop
from oban import Job, Oban, worker
from oban.schema import install

RECORDER = benchkit.Recorder()
T = TypeVar("T")


@worker(queue="default")
class NoopWorker:
    async def process(self, job: Job) -> None:
        RECORDER.record(int(job.args["seq"]))


def new_job(seq: int) -> Any:
    return NoopWorker.new({"seq": seq})  # type: ignore[attr-defined]


def run(coro_fn: Callable[[benchkit.Task], Awaitable[T]], task: benchkit.Task) -> T:
    async def main() -> T:
        return await coro_fn(task)

    return uvloop.run(main())


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="oban",
        version=version("oban"),
        enqueue_modes=[
            {"name": "single", "bulk": False, "description": "Oban.enqueue: one job, one transaction"},
            {
                "name": "bulk",
                "bulk": True,
                "description": "Oban.enqueue_many (OSS: one INSERT per job in one transaction)",
            },
        ],
        variants=[
            {
                "name": "default",
                "scales": True,
                "settings": 'Oban(queues={"default": C}), create_pool defaults (1-10), uvloop',
            }
        ],
        latency_variant="default",
        done_sql="SELECT count(*) FROM oban_jobs WHERE state = 'completed'",
        total_sql="SELECT count(*) FROM oban_jobs",
        notes=["OSS tier: enqueue_many and acks run one statement per job (bulk versions are Pro)"],
    )


async def _setup(task: benchkit.Task) -> benchkit.Result:
    pool = await Oban.create_pool(task["dsn"])
    try:
        await install(pool)
        preload = task.get("preload")
        if preload:
            async with Oban(pool=pool) as oban:
                await oban.enqueue_many([new_job(seq) for seq in range(int(preload["count"]))])
    finally:
        await pool.close()
    return {}


async def _enqueue(task: benchkit.Task) -> benchkit.Result:
    pool = await Oban.create_pool(task["dsn"])
    try:
        async with Oban(pool=pool) as oban:

            async def single(seq: int) -> None:
                await oban.enqueue(new_job(seq))

            async def bulk(seqs: list[int]) -> None:
                await oban.enqueue_many([new_job(seq) for seq in seqs])

            return await benchkit.enqueue_async(task, single, {"bulk": bulk})
    finally:
        await pool.close()


async def _work(task: benchkit.Task) -> benchkit.Result:
    pool = await Oban.create_pool(task["dsn"])
    try:
        oban = Oban(pool=pool, queues={"default": int(task["concurrency"])})
        await oban.start()
        try:
            await benchkit.hold()
        finally:
            await oban.stop()
    finally:
        await pool.close()
    return RECORDER.result(bool(task.get("record_starts")))


def setup(task: benchkit.Task) -> benchkit.Result:
    return run(_setup, task)


def enqueue(task: benchkit.Task) -> benchkit.Result:
    return run(_enqueue, task)


def work(task: benchkit.Task) -> benchkit.Result:
    return run(_work, task)


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
