"""The completer: records finished attempts in batches, one statement for many jobs.

Executors hand it an :class:`~pgqueue.executor.Ack` and move on; the completer writes what has
gathered every few milliseconds (or as soon as ``max_batch`` acks wait) with the fenced
``fetch_jobs`` statement, claiming nothing. A database error keeps the batch and retries it with
backoff, so an outage delays acks but loses none. A crash loses at most the acks not yet
written: those jobs are still ``executing`` in the database, so the lifeline rescues them and
they run again (at least once).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from psycopg_pool import AsyncConnectionPool

from . import telemetry
from .executor import Ack, fetch_params, fetch_result
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, Wakeup, describe_error
from .store import queries_for

__all__ = ["Completer"]

_log = logging.getLogger("pgqueue.completer")


class Completer:
    """Batches acks for one runtime. A :class:`~pgqueue.lifecycle.Service`."""

    name = "completer"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        *,
        max_batch: int = 1000,
        max_delay: float = 0.002,
        async_commit: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pool = pool
        self.queries = queries_for(schema)
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.async_commit = async_commit
        self.clock = clock
        self._pending: list[Ack] = []
        self._wakeup = Wakeup(clock)
        self._idle = anyio.Event()
        self._idle.set()
        self.written = 0
        self.rejected = 0

    @property
    def backlog(self) -> int:
        """Acks waiting to be written; producers stop fetching when it grows past their limit."""
        return len(self._pending)

    async def ack(self, ack: Ack) -> None:
        """Queue ``ack`` for the next batch (returns at once)."""
        self._pending.append(ack)
        if self._idle.is_set():
            self._idle = anyio.Event()
        if len(self._pending) >= self.max_batch or len(self._pending) == 1:
            self._wakeup.set()

    def take(self) -> list[Ack]:
        """Hand every pending ack to a producer that writes them with its next fetch."""
        taken, self._pending = self._pending, []
        return taken

    def give_back(self, acks: list[Ack]) -> None:
        """Acks a producer took but could not write: the completer writes them after all."""
        if acks:
            self._pending[:0] = acks
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._wakeup.set()

    def taken_written(self, count: int, acked: int) -> None:
        """A producer wrote ``count`` taken acks, of which ``acked`` passed the fence; settle the
        books (and ``wait_idle``)."""
        self._count(count, acked)
        if not self._pending:
            self._idle.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait(3600)
            if not self._pending:
                continue
            # Let a burst gather: the acks of jobs finishing together go out in one statement.
            if len(self._pending) < self.max_batch and self.max_delay > 0:
                await self.clock.sleep(self.max_delay)
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending now, retrying on database errors until it is written."""
        backoff = Backoff(0.05, 5.0)
        failures = 0
        while self._pending:
            # Take the batch out before writing it: while the write awaits, a producer may take
            # the acks that are still pending to write them with its fetch.
            batch = self._pending[: self.max_batch]
            del self._pending[: len(batch)]
            try:
                await self._write(batch)
            except Exception as exc:
                self._pending[:0] = batch
                failures += 1
                delay = backoff.delay(failures, self.clock.random())
                _log.warning(
                    "pgqueue completer could not write %d acks (%s); retrying in %.2fs",
                    len(batch),
                    describe_error(exc),
                    delay,
                )
                await self.clock.sleep(delay)
                continue
            failures = 0
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once every ack handed in so far has been written."""
        await self._idle.wait()

    def _count(self, count: int, acked: int) -> None:
        self.written += acked
        self.rejected += count - acked
        if acked < count:
            # The fence refused some: those jobs were rescued, cancelled or re-run meanwhile.
            _log.debug("pgqueue completer: %d of %d acks were fenced out", count - acked, count)

    async def _write(self, batch: list[Ack]) -> None:
        started = self.clock.monotonic()
        async with self.pool.connection() as conn:
            params = fetch_params(batch, async_commit=self.async_commit)
            cursor = await conn.execute(self.queries.fetch_jobs, params)
            acked, _ = fetch_result(await cursor.fetchall())
        self._count(len(batch), acked)
        telemetry.emit(
            ("completer", "flush"),
            {"duration": self.clock.monotonic() - started, "count": len(batch), "acked": acked},
            {},
        )
