"""Recovery: a periodic pgqueue plugin that re-drives deliveries stuck in ``dispatched``.

A delivery is ``dispatched`` from its claim until its attempt is recorded, a few milliseconds
normally. While its dispatch job is live (available, scheduled, executing, retryable) the job
owns it: the lifeline rescues a job whose worker died, and the rerun sends again under the same
idempotency key. A delivery whose job is gone (deleted by hand or by a pruner) or finished
(discarded after crashes used up its runs, cancelled by an operator) has nobody left to end it.

Each round (leader-only, every ``interval`` seconds) :class:`Recovery` finds deliveries
``dispatched`` for more than ``stuck_after`` seconds whose job is gone or finished, inserts a new
dispatch job for each, and stamps the delivery's metadata with ``recovery_source``,
``recovery_reason`` (``job_missing`` or ``job_finished``), ``recovered_at`` and the new job's id,
all in one transaction. The new job runs under the retry contract like any other: the claim finds
the delivery ``dispatched`` and sends it again (same idempotency key, the next attempt number),
and the record ends it. :func:`~chimeway.explain.explain_delivery` shows the recovery in the
timeline. Like Elixir Chimeway's ``recover_delivery``, the new job has a fresh retry budget.

``python -m chimeway.worker`` runs it; add it to a runtime of your own with
``plugins=[Recovery(schema="my_schema")]``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pgqueue
from pgqueue.errors import ConfigError
from pgqueue.lifecycle import Clock
from pgqueue.migrate import validate_schema_name
from pgqueue.options import MAX_SECONDS
from pgqueue.plugins import PluginContext

from .dispatch import QUEUE, dispatch_job
from .journeys.workers import journey_dispatch_job
from .store import queries_for

__all__ = ["Recovery"]

_log = logging.getLogger("chimeway.recovery")


@dataclass
class Recovery:
    """Re-drives deliveries stuck in ``dispatched`` whose dispatch job is gone or finished.

    ``stuck_after``: seconds a delivery must have been ``dispatched`` (keep it above the slowest
    channel's deadline and the lifeline's rescue window, so a slow send or a rescue in progress is
    left alone). ``interval``: seconds between rounds. ``limit``: deliveries per round. ``schema``:
    where Chimeway's tables are (the runtime's schema, where pgqueue's jobs are, when None).
    """

    stuck_after: float = 300.0
    interval: float = 60.0
    limit: int = 100
    schema: str | None = None
    name: str = "chimeway_recovery"
    leader_only: bool = True

    def __post_init__(self) -> None:
        for field_name in ("stuck_after", "interval"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_SECONDS:
                raise ConfigError(
                    f"recovery {field_name} must be a positive number of seconds, got {value!r}"
                )
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError(f"recovery limit must be an integer >= 1, got {self.limit!r}")
        if self.schema is not None:
            validate_schema_name(self.schema)

    def next_delay(self, clock: Clock) -> float:
        return float(self.interval)

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        queries = queries_for(self.schema or ctx.schema, ctx.schema)
        recovered: dict[str, int] = {"job_missing": 0, "job_finished": 0}
        async with ctx.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                queries.recovery_stuck, {"stuck_after": float(self.stuck_after), "limit": int(self.limit)}
            )
            rows = await cursor.fetchall()
            stuck = [str(row[0]) for row in rows]
            # a journey's delivery is re-driven by its journey's dispatch job, which moves the run on
            journeys = {str(row[0]): (row[1], row[2]) for row in rows if row[1] is not None}
            if not stuck:
                return {"recovered_count": 0}
            cursor = await conn.execute(queries.recovery_jobs, {"queue": QUEUE, "ids": stuck})
            jobs = {str(delivery_id): bool(live) for delivery_id, live in await cursor.fetchall()}
            orphans = [
                (delivery_id, jobs.get(delivery_id)) for delivery_id in stuck if not jobs.get(delivery_id)
            ]
            if not orphans:
                return {"recovered_count": 0}
            inserted = await pgqueue.ainsert_all(
                conn,
                [
                    journey_dispatch_job(uuid.UUID(d), *journeys[d]) if d in journeys else dispatch_job(d)
                    for d, _ in orphans
                ],
                schema=ctx.schema,
            )
            # A job that finished less than a uniqueness period ago still holds the delivery's key:
            # no new job then, and nothing is stamped; a later round tries again.
            marks = [
                (delivery_id, "job_missing" if live is None else "job_finished", job.id)
                for (delivery_id, live), job in zip(orphans, inserted, strict=True)
                if not job.conflict
            ]
            if marks:
                ids, reasons, job_ids = (list(column) for column in zip(*marks, strict=True))
                await conn.execute(queries.recovery_mark, {"ids": ids, "reasons": reasons, "jobs": job_ids})
                for _, reason, _ in marks:
                    recovered[reason] += 1
        for delivery_id, reason, job_id in marks:
            _log.warning(
                "chimeway recovery: delivery %s was stuck in dispatched (%s); re-driven by job %s",
                delivery_id,
                reason,
                job_id,
            )
        return {"recovered_count": len(marks), **recovered}
