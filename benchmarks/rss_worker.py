"""The no-op worker ``benchmarks.rss_drain`` runs through ``python -m pgqueue start``."""

from __future__ import annotations

import pgqueue


class Noop(pgqueue.Worker, queue="bench", name="bench.RssNoop"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None
