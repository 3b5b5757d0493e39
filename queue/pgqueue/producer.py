"""A producer runs one queue on one node: it fetches by demand and starts each job it claims.

Demand is ``limit - running``. A fetch happens when something may have changed it: an insert
notification for the queue, a job finishing, or the slow safety poll. Wake-ups that arrive while a
fetch is in flight collapse into a single follow-up fetch, so a burst of inserts or completions
costs one query, and an idle producer answers a notification with no added delay.

Jobs run in the producer's own task group: async ``perform`` methods on the event loop, sync ones
in worker threads bounded by the queue's limit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from . import telemetry
from .completer import Completer
from .executor import Ack, Cancellation, Claim, Executor, ack_statement, fetch_params, read_claim
from .job import Job
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, Wakeup, describe_error
from .poison import is_row_error
from .queue_config import QueueConfig
from .store import queries_for

__all__ = ["Producer", "QueueConfig"]

_log = logging.getLogger("pgqueue.producer")
#: a limited queue's rate window is kept in this many slots per period (see fetch_limited.sql)
RATE_SLOTS = 40
#: how soon a producer whose jobs a cluster-wide limit held back tries again, at most
_LIMITED_RETRY = 0.05
#: seconds a producer whose single-statement fetch was contended fetches behind the lock instead
_LOCKED_AFTER_CONTENTION = 1.0


class _Running(Cancellation):
    """A job running here: what ``cancel_job`` and ``check_queue`` need to find it."""

    __slots__ = ("job", "started", "task")

    def __init__(self, job: Job, started: float) -> None:
        self.requested = False
        self.job = job
        self.started = started
        self.task: asyncio.Task[None] | None = None


@dataclass
class Producer:
    """Fetches and runs the jobs of one queue. A :class:`~pgqueue.lifecycle.Service`."""

    queue: str
    config: QueueConfig
    pool: AsyncConnectionPool[Any]
    schema: str
    node: str
    executor: Executor
    completer: Completer
    #: called once before the first fetch, so the lifeline knows this producer is alive
    register: Callable[[Producer], Awaitable[None]]
    poll_interval: float = 1.0
    #: commit claims and acks without waiting for the WAL flush (see Runtime's synchronous_acks)
    async_commit: bool = False
    max_backlog: int = 10_000
    clock: Clock = SYSTEM_CLOCK
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    running: dict[int, _Running] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queries = queries_for(self.schema)
        self.limiter = anyio.CapacityLimiter(self.config.limit)
        self._wakeup = Wakeup(self.clock)
        self._stopping = False
        self._drained = anyio.Event()
        self._held_back = False
        self._retry_in = 0.0
        self._contended = False
        self._locked_until = 0.0
        self._row_seen = False
        self.fetched = 0

    @property
    def name(self) -> str:
        return f"producer[{self.queue}]"

    # -- control ---------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something may be waiting: fetch soon (now, when idle)."""
        self._wakeup.set()

    def pause(self) -> None:
        self.config.paused = True

    def resume(self) -> None:
        self.config.paused = False
        self.wake()

    def scale(self, limit: int) -> None:
        self.configure(self.config.with_changes(self.queue, limit=limit))

    def configure(self, config: QueueConfig) -> None:
        """Run with ``config`` from now on (limits, paused); takes effect at the next fetch."""
        self.config = QueueConfig.parse(self.queue, config)
        self.limiter.total_tokens = self.config.limit
        self.wake()

    def cancel_job(self, job_id: int) -> bool:
        """Stop a running job; False when it isn't running here.

        Queue control calls this only once the database has the job cancelled, so the job's own
        ack (``cancelled``) is refused by the fence and the database's record stands."""
        running = self.running.get(job_id)
        if running is None or running.task is None:
            return False
        running.requested = True
        running.task.cancel()
        return True

    def stop_fetching(self) -> None:
        """The first step of a graceful shutdown: claim nothing more."""
        self._stopping = True
        if not self.running:
            self._drained.set()

    async def wait_drained(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` for running jobs to finish; returns the ids still running."""
        with anyio.move_on_after(timeout):
            await self._drained.wait()
        return sorted(self.running)

    def check(self) -> dict[str, Any]:
        """What ``check_queue`` reports for this producer."""
        return {
            "queue": self.queue,
            "limit": self.config.limit,
            "paused": self.config.paused,
            "global_limit": self.config.global_limit,
            "rate_limit": self.config.rate_limit,
            "rate_period": self.config.rate_period,
            "partitioned": self.config.partitioned,
            "running": sorted(self.running),
            "node": self.node,
            "uuid": self.uuid,
        }

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.register(self)
        backoff = Backoff(0.1, 5.0)
        failures = 0
        self.wake()  # jobs may be waiting already: fetch at once
        try:
            while True:
                # A cluster-wide limit that left jobs waiting frees up as jobs end on any node and
                # as the rate window slides, neither of which wakes this node: look again soon.
                await self._wakeup.wait(self._retry_delay() if self._held_back else self.poll_interval)
                try:
                    await self._dispatch()
                    failures = 0
                except Exception as exc:
                    # Never let a database error escape: it would abandon the jobs running here.
                    failures += 1
                    delay = backoff.delay(failures, self.clock.random())
                    _log.warning(
                        "pgqueue %s fetch failed (%s); retrying in %.2fs",
                        self.name,
                        describe_error(exc),
                        delay,
                    )
                    await self.clock.sleep(delay)
                    self.wake()
        finally:
            # Stopped (shutdown past the grace period, or the queue stopped): abandon what still
            # runs; those rows stay executing for the lifeline.
            tasks = [r.task for r in self.running.values() if r.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(*tasks, return_exceptions=True)

    def _demand(self) -> int:
        if self._stopping or self.config.paused or self.completer.backlog >= self.max_backlog:
            return 0
        return self.config.limit - len(self.running)

    async def _dispatch(self) -> None:
        demand = self._demand()
        if demand <= 0:
            return
        started = self.clock.monotonic()
        # Acks waiting in the completer ride along with this fetch: one round trip for both.
        acks = self.completer.take()
        try:
            acked, jobs, undecodable = await self._fetch(acks, demand)
        except Exception as exc:
            if not acks or not is_row_error(exc):
                self.completer.give_back(acks)
                raise
            # One of the acks can't be written: the fetch must not fail with it. The completer
            # isolates them; this fetch goes on without.
            self.completer.give_back(acks, suspect=True)
            acks = []
            acked, jobs, undecodable = await self._fetch([], demand)
        except BaseException:
            self.completer.give_back(acks)
            raise
        if acks:
            self.completer.taken_written(len(acks), acked)
        for ack in undecodable:
            _log.warning("pgqueue %s: job %d discarded: %s", self.name, ack.job_id, ack.error)
            await self.completer.ack(ack)
        self.fetched += len(jobs)
        loop = asyncio.get_running_loop()
        now = self.clock.monotonic()
        for job in jobs:
            running = _Running(job, now)
            self.running[job.id] = running
            # A plain asyncio task per job (not an anyio task group child): spawning one costs a
            # fraction, and this is the hottest path of the node.
            running.task = loop.create_task(self._execute(job, running))
        telemetry.emit(
            ("producer", "fetch"),
            {"duration": self.clock.monotonic() - started, "count": len(jobs)},
            {"queue": self.queue, "demand": demand},
        )
        if len(jobs) == demand:
            self.wake()  # the queue may hold more than we could take

    def _retry_delay(self) -> float:
        if self._retry_in > 0:
            # The rate window has no room until then; a little jitter spreads the nodes' retries.
            return min(self.poll_interval, self._retry_in + 0.002 + self.clock.random() * 0.005)
        delay = min(self.poll_interval, _LIMITED_RETRY)
        if self.config.rate_period is not None:
            delay = min(delay, self.config.rate_period / RATE_SLOTS)
        return max(delay, 0.001) * (0.5 + self.clock.random())

    async def _fetch(self, acks: list[Ack], demand: int) -> Claim:
        params = fetch_params(
            acks,
            queue=self.queue,
            demand=demand,
            node=self.node,
            producer=self.uuid,
            async_commit=self.async_commit,
        )
        config = self.config
        if not config.limited:
            self._held_back = False
            async with self.pool.connection() as conn:
                cursor = conn.cursor(row_factory=tuple_row)
                await cursor.execute(ack_statement(self.queries, "fetch_jobs", acks), params)
                return await read_claim(cursor)
        params.update(
            # this producer's jobs still performing (see fetch_limited.sql's `running`)
            running=len(self.running),
            global_limit=config.global_limit,
            rate_limit=config.rate_limit,
            rate_period=config.rate_period,
            period_us=round((config.rate_period or 1.0) * 1_000_000),
            slots=RATE_SLOTS,
        )
        # (the batched variant when an ack is for a batch member: see ack_statement)
        statement = ack_statement(
            self.queries, "fetch_partitioned" if config.partitioned else "fetch_limited", acks
        )
        async with self.pool.connection() as conn:
            if config.partitioned:
                return await self._fetch_locked(conn, statement, params)
            if self.clock.monotonic() < self._locked_until:
                # Other nodes admit to this queue too: the single statement would mostly be
                # contended and cost a second round trip; lock first for a while.
                return await self._fetch_locked(conn, statement, params)
            # One statement, exact unless an admission on another node committed while it ran
            # (see fetch_limited.sql); then, with nothing admitted, again behind the lock.
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute(statement, params)
            claim = await self._read_limited(cursor)
            if not self._contended:
                self._row_seen = True
                return claim
            if self._row_seen:  # (the first fetch of a queue is contended: its row is created)
                self._locked_until = self.clock.monotonic() + _LOCKED_AFTER_CONTENTION
            self._row_seen = True
            acked, jobs, undecodable = claim
            params["acks"] = "[]"  # they landed with the first statement
            _, jobs, undecodable_locked = await self._fetch_locked(conn, self.queries.fetch_limited, params)
            return acked, jobs, undecodable + undecodable_locked

    async def _fetch_locked(
        self, conn: psycopg.AsyncConnection[Any], statement: str, params: dict[str, Any]
    ) -> Claim:
        # Two statements, one transaction, sent together: the lock on the queue's admission row,
        # then the fetch, whose snapshot is taken once the lock is held (see lock_limits.sql).
        cursor = conn.cursor(row_factory=tuple_row)
        async with conn.pipeline(), conn.transaction():
            await cursor.execute(self.queries.limited_plan)
            await cursor.execute(self.queries.lock_limits, {"queue": self.queue})
            await cursor.execute(statement, params)
        return await self._read_limited(cursor)

    async def _read_limited(self, cursor: psycopg.AsyncCursor[Any]) -> Claim:
        first = await cursor.fetchone()
        await cursor.scroll(0, mode="absolute")
        retry_in = first[1] if first is not None else None
        self._contended = bool(first[2]) if first is not None else False
        self._held_back = retry_in is not None
        self._retry_in = float(retry_in or 0.0)
        return await read_claim(cursor, offset=3)

    async def _execute(self, job: Job, running: _Running) -> None:
        try:
            await self.executor.execute(job, thread_limiter=self.limiter, cancellation=running)
        except Exception:
            _log.exception("pgqueue %s: job %d failed outside perform", self.name, job.id)
        finally:
            self.running.pop(job.id, None)
            if self._stopping and not self.running:
                self._drained.set()
            self.wake()
