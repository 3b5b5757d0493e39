"""Workers ``benchmarks.results_wait`` runs through ``python -m pgqueue start``.

``Noop`` does nothing and returns nothing (the drains: jobs nobody awaits). ``Stamp`` sleeps
``args["ms"]`` (so its waiter is listening before it finishes), then returns the wall-clock time it
finished, which its waiter subtracts from the time it was woken.
"""

from __future__ import annotations

import time

import anyio

import pgqueue


class Noop(pgqueue.Worker, queue="bench", name="bench.ResultsNoop"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


class Stamp(pgqueue.Worker, queue="stamp", name="bench.Stamp"):
    async def perform(self, job: pgqueue.Job) -> float:
        await anyio.sleep(job.args["ms"] / 1000)
        return time.time()
