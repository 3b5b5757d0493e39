"""Adapter for procrastinate (PyPI ``procrastinate``), driven by the benchmark runner.

Documented defaults throughout: ``PsycopgConnector`` with psycopg_pool's default pool, an async
no-op task, ``App.run_worker_async(concurrency=C)`` with LISTEN/NOTIFY on and the default 5 s
polling fallback. procrastinate fetches one job per query by design.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib.metadata import version
from typing import Any

import benchkit
import procrastinate

RECORDER = benchkit.Recorder()


def make_app(dsn: str) -> tuple[procrastinate.App, Any]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop(seq: int) -> None:
        RECORDER.record(seq)

    return app, noop


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="procrastinate",
        version=version("procrastinate"),
        enqueue_modes=[
            {"name": "single", "bulk": False, "description": "Task.defer_async: one job, one transaction"},
            {
                "name": "bulk",
                "bulk": True,
                "description": "Task.batch_defer_async with every job in one call",
            },
        ],
        variants=[
            {
                "name": "default",
                "scales": True,
                "settings": "run_worker_async(concurrency=C), listen_notify=True, "
                "fetch_job_polling_interval=5 s, psycopg_pool default pool (4 connections)",
            }
        ],
        latency_variant="default",
        done_sql="SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        total_sql="SELECT count(*) FROM procrastinate_jobs",
        notes=["one job per fetch query by design (procrastinate_fetch_job_v2, LIMIT 1)"],
    )


async def _setup(task: benchkit.Task) -> benchkit.Result:
    app, noop = make_app(task["dsn"])
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        preload = task.get("preload")
        if preload:
            await noop.batch_defer_async(*({"seq": seq} for seq in range(int(preload["count"]))))
    return {}


async def _enqueue(task: benchkit.Task) -> benchkit.Result:
    app, noop = make_app(task["dsn"])
    async with app.open_async():

        async def single(seq: int) -> None:
            await noop.defer_async(seq=seq)

        async def bulk(seqs: list[int]) -> None:
            await noop.batch_defer_async(*({"seq": seq} for seq in seqs))

        return await benchkit.enqueue_async(task, single, {"bulk": bulk})


async def _work(task: benchkit.Task) -> benchkit.Result:
    app, _ = make_app(task["dsn"])
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=int(task["concurrency"]), install_signal_handlers=False)
        )
        await benchkit.hold(worker)
        # Cancelling run_worker_async is procrastinate's documented graceful stop.
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return RECORDER.result(bool(task.get("record_starts")))


def setup(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_setup(task))


def enqueue(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_enqueue(task))


def work(task: benchkit.Task) -> benchkit.Result:
    return asyncio.run(_work(task))


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
