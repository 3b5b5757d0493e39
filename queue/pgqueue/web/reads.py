"""What the dashboard reads: job pages by keyset, counts, nodes, throughput. Async, one pool.

Every statement is a file in ``pgqueue/queries/`` (``web_*.sql``) rendered by :mod:`pgqueue.store`;
filters go through :class:`pgqueue.store.JobFilter`, so values are always parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from ..batches import BatchProgress
from ..counts import StateCounts, count_params
from ..job import Job
from ..manage import aget_job
from ..store import JobFilter, filtered, queries_for
from .recent import Recent
from .waiting import describe, is_parked, may_wait

__all__ = [
    "JobPage",
    "JobRow",
    "Minute",
    "Overview",
    "Producer",
    "Reads",
]

_MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class JobRow:
    """One line of the job list (no args or meta: those are on the detail page only)."""

    id: int
    state: str
    queue: str
    worker: str
    tags: list[str]
    attempt: int
    max_attempts: int
    priority: int
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    discarded_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first, with the cursors of the pages either side (None: none)."""

    rows: list[JobRow]
    older: int | None
    newer: int | None
    #: job id → what the waiting workflow steps on the page wait for, in words
    waiting: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Producer:
    uuid: str
    node: str
    queue: str
    limit: Any
    paused: bool
    running: Any
    global_limit: Any
    started_at: datetime
    updated_at: datetime
    age_seconds: float


@dataclass(frozen=True, slots=True)
class Overview:
    """Counts per queue and state (estimated for states too large to count), executing jobs per
    node, the producers and the leader."""

    counts: StateCounts
    #: queue → node → executing jobs
    executing: dict[str, dict[str, int]]
    producers: list[Producer]
    leader: str | None

    def totals(self) -> dict[str, int]:
        return self.counts.totals()


@dataclass(frozen=True, slots=True)
class Minute:
    at: datetime
    completed: int
    failed: int
    run_seconds: float | None
    wait_seconds: float | None


class Reads:
    """The dashboard's queries for one schema, on one pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, counts_seconds: float = 1.0) -> None:
        self.pool = pool
        self.schema = schema
        self.queries = queries_for(schema)
        #: the counts by queue and state, read at most once per ``counts_seconds`` (see Recent)
        self.counts = Recent(self._read_counts, counts_seconds)
        self._minutes = Recent(self._read_throughput, counts_seconds)

    async def _read_counts(self) -> StateCounts:
        return StateCounts.from_rows(await self._fetch(self.queries.web_state_counts, count_params()))

    async def _fetch(self, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        # Never prepared: a filtered list's best plan depends on its values (a rare state reads its
        # index, a common one the primary key), and a server-side prepared statement ends up on a
        # generic plan after a few runs (measured: an args search went from 60 ms to 800 ms).
        async with self.pool.connection() as conn:
            cursor = await conn.execute(statement, params or {}, prepare=False)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows

    async def jobs(
        self, job_filter: JobFilter, *, state: str | None, before: int | None, after: int | None, limit: int
    ) -> JobPage:
        """A page of jobs (of ``state``, when given) below ``before`` (or, with ``after``, the page
        just above it)."""
        by_state = {"state": state} if state is not None else {}
        kind = "web_jobs_state" if state is not None else "web_jobs"
        if after is not None:
            statement, params = filtered(f"{kind}_after", self.schema, job_filter)
            rows = await self._fetch(statement, {**params, **by_state, "cursor": after, "limit": limit + 1})
            more_newer = len(rows) > limit
            page = [JobRow(*row) for row in rows[:limit]][::-1]
            return JobPage(
                page,
                page[-1].id if page else None,
                page[0].id if page and more_newer else None,
                await self._waiting(page),
            )
        cursor = _MAX_ID if before is None else before
        statement, params = filtered(f"{kind}_before", self.schema, job_filter)
        rows = await self._fetch(statement, {**params, **by_state, "cursor": cursor, "limit": limit + 1})
        page = [JobRow(*row) for row in rows[:limit]]
        older = page[-1].id if page and len(rows) > limit else None
        newer = page[0].id if page and before is not None else None
        return JobPage(page, older, newer, await self._waiting(page))

    async def _waiting(self, page: Sequence[JobRow]) -> dict[int, str]:
        return await self.waiting(
            {
                row.id: is_parked(row.state, row.scheduled_at)
                for row in page
                if may_wait(row.state, row.attempted_at)
            }
        )

    async def waiting(self, parked: dict[int, bool]) -> dict[int, str]:
        """What the jobs ``parked`` names (id → parked or not) wait for, in words, for those a
        workflow holds (see :mod:`pgqueue.web.waiting`); no query when there are none."""
        if not parked:
            return {}
        rows = await self._fetch(self.queries.web_workflow_waits, {"ids": list(parked)})
        described = {int(row[0]): describe(row, parked[int(row[0])]) for row in rows}
        return {job_id: text for job_id, text in described.items() if text is not None}

    async def job(self, job_id: int) -> Job | None:
        async with self.pool.connection() as conn:
            return await aget_job(conn, job_id, schema=self.schema)

    async def job_state(self, job_id: int) -> str | None:
        rows = await self._fetch(self.queries.web_job_exists, {"id": job_id})
        return str(rows[0][0]) if rows else None

    async def overview(self) -> Overview:
        counts = await self.counts.get()
        async with self.pool.connection() as conn:
            executing_rows = await (await conn.execute(self.queries.web_executing_by_node)).fetchall()
            producer_rows = await (await conn.execute(self.queries.web_producers)).fetchall()
            leader_row = await (
                await conn.execute(self.queries.leader_current, {"name": "pgqueue"})
            ).fetchone()
        executing: dict[str, dict[str, int]] = {}
        for queue, node, count in executing_rows:
            executing.setdefault(queue, {})[node] = int(count)
        return Overview(counts, executing, _producers(producer_rows), leader_row[0] if leader_row else None)

    async def nodes(self) -> tuple[list[Producer], str | None]:
        """Every producer row and the leader (no job counts: the nodes page needs none)."""
        async with self.pool.connection() as conn:
            producer_rows = await (await conn.execute(self.queries.web_producers)).fetchall()
            leader_row = await (
                await conn.execute(self.queries.leader_current, {"name": "pgqueue"})
            ).fetchone()
        return _producers(producer_rows), leader_row[0] if leader_row else None

    async def batches(self, limit: int = 100) -> list[BatchProgress]:
        """The newest batches with their progress."""
        return [BatchProgress(*row) for row in await self._fetch(self.queries.web_batches, {"limit": limit})]

    async def throughput(self) -> list[Minute]:
        """Finished jobs per minute over the last hour (shared like the counts)."""
        return await self._minutes.get()

    async def _read_throughput(self) -> list[Minute]:
        rows = await self._fetch(self.queries.web_throughput)
        return [
            Minute(at, int(done), int(failed), _float(run), _float(wait))
            for at, done, failed, run, wait in rows
        ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _producers(rows: Sequence[tuple[Any, ...]]) -> list[Producer]:
    producers = []
    for uuid, node, queue, meta, started_at, updated_at, age in rows:
        meta = meta if isinstance(meta, dict) else {}
        producers.append(
            Producer(
                str(uuid),
                node,
                queue,
                meta.get("limit"),
                meta.get("paused") is True,
                meta.get("running"),
                meta.get("global_limit"),
                started_at,
                updated_at,
                float(age),
            )
        )
    return producers
