"""The workers ``benchmarks.processes`` and ``benchmarks.cost_curve`` run: a CPU-bound sync job and
no-op sync and async jobs."""

from __future__ import annotations

import pgqueue


class Burn(pgqueue.Worker, queue="bench_cpu", name="bench.Burn"):
    """Pure-Python arithmetic for ``args["loops"]`` iterations: holds the interpreter lock throughout."""

    def perform(self, job: pgqueue.Job) -> int:
        total = 0
        for i in range(job.args["loops"]):
            total = (total + i * i) % 1_000_003
        return total


class SyncNoop(pgqueue.Worker, queue="bench_cpu", name="bench.SyncNoop"):
    """Does nothing: what is left to measure is the hand-off to a thread or a process."""

    def perform(self, job: pgqueue.Job) -> None:
        return None


class AsyncNoop(pgqueue.Worker, queue="bench_cost", name="bench.AsyncNoop"):
    """Does nothing, asynchronously: the cost curve (``benchmarks.cost_curve``) measures the queue."""

    async def perform(self, job: pgqueue.Job) -> None:
        return None
