"""The workers ``benchmarks.processes`` runs: a CPU-bound sync job and a no-op sync job."""

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
