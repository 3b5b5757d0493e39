"""Adapter for chancy (PyPI ``chancy``), driven by the benchmark runner.

A queue declared with chancy's async executor and ``eager_polling=True`` (poll again as soon as a
job completes): chancy documents the async executor for I/O-bound jobs, and without eager polling a
queue fetches at most C jobs per ``polling_interval`` (5 s), which drains a backlog at 2 jobs/s at
C=10. Everything else is chancy's default: ``Chancy(dsn)`` with its default plugins and pool (1-10
connections), notifications on, completion updates written in batches every second. Logging is at
WARNING, as for every system.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import version

import benchkit
from chancy import Chancy, Job, Queue, Worker
from chancy.app import setup_default_logger

RECORDER = benchkit.Recorder()
QUEUE = "bench"


async def noop(*, seq: int) -> None:
    RECORDER.record(seq)


def app(dsn: str) -> Chancy:
    # chancy's default logger writes a line per job at INFO; every system runs at WARNING here.
    return Chancy(dsn, log=setup_default_logger(logging.WARNING))


def job(seq: int) -> Job:
    return Job.from_func(noop, queue=QUEUE, kwargs={"seq": seq})


def queue(concurrency: int) -> Queue:
    return Queue(
        name=QUEUE,
        concurrency=concurrency,
        executor=Chancy.Executor.Async,
        eager_polling=True,
    )


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="chancy",
        version=version("chancy"),
        enqueue_modes=[
            {"name": "single", "bulk": False, "description": "Chancy.push: one job, one transaction"},
            {"name": "bulk", "bulk": True, "description": "Chancy.push_many (default batch_size=1000)"},
        ],
        variants=[
            {
                "name": "async-eager",
                "scales": True,
                "settings": "Queue(concurrency=C, executor=AsyncExecutor, eager_polling=True), "
                "default plugins, pool 1-10",
            }
        ],
        latency_variant="async-eager",
        done_sql="SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'",
        total_sql="SELECT count(*) FROM chancy_jobs",
        notes=["job completions are written by the worker in batches every 1 s (send_outgoing_interval)"],
    )


async def _setup(task: benchkit.Task) -> benchkit.Result:
    async with app(task["dsn"]) as chancy:
        await chancy.migrate()
        await chancy.declare(queue(10))
        preload = task.get("preload")
        if preload:
            async for _ in chancy.push_many([job(seq) for seq in range(int(preload["count"]))]):
                pass
    return {}


async def _enqueue(task: benchkit.Task) -> benchkit.Result:
    async with app(task["dsn"]) as chancy:

        async def single(seq: int) -> None:
            await chancy.push(job(seq))

        async def bulk(seqs: list[int]) -> None:
            async for _ in chancy.push_many([job(seq) for seq in seqs]):
                pass

        return await benchkit.enqueue_async(task, single, {"bulk": bulk})


async def _work(task: benchkit.Task) -> benchkit.Result:
    async with app(task["dsn"]) as chancy:
        await chancy.declare(queue(int(task["concurrency"])), upsert=True)
        worker = Worker(chancy, register_signal_handlers=False)
        await worker.start()
        waiter = asyncio.create_task(worker.wait_for_shutdown())
        await benchkit.hold(waiter)
        await worker.stop()
        await waiter
    return RECORDER.result(bool(task.get("record_starts")))


def setup(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_setup(task))


def enqueue(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_enqueue(task))


def work(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_work(task))


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
