"""The worker ``benchmarks.workflows`` runs through ``python -m pgqueue start``: a no-op step."""

from __future__ import annotations

import pgqueue


class Step(pgqueue.Worker, queue="bench", name="bench.WorkflowStep"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None
