"""The completer: records finished attempts in batches, one statement for many jobs.

Executors hand it an :class:`~pgqueue.executor.Ack` and move on; the completer writes what has
gathered every few milliseconds (or as soon as ``max_batch`` acks wait) with the fenced
``fetch_jobs`` statement, claiming nothing. A database error keeps the batch and retries it with
backoff, so an outage delays acks but loses none. A crash loses at most the acks not yet
written: those jobs are still ``executing`` in the database, so the lifeline rescues them and
they run again (at least once).

An ack the database refuses for its data (see :func:`pgqueue.poison.is_row_error`) must not hold
up the others: the batch is split in halves until the refused ack stands alone, everything else
lands, and the refused ack is written once more with a fixed note in place of its error (its state
kept, its delay the default backoff), and logged once. Producers that find their fetch refused
because of the acks they took hand them back here as *suspect*: they are written first, isolated,
and never handed to a producer again.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from psycopg_pool import AsyncConnectionPool

from . import telemetry
from .backoff import default_backoff
from .executor import Ack, ack_statement, fetch_params, fetch_result
from .job import JobState
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, Wakeup, describe_error
from .poison import is_row_error, storable_text
from .store import queries_for

__all__ = ["Completer", "placeholder"]

_log = logging.getLogger("pgqueue.completer")
_DELAYED_STATES = frozenset({JobState.RETRYABLE, JobState.SCHEDULED})


def placeholder(ack: Ack, exc: BaseException) -> Ack:
    """``ack`` made writable: its error replaced by a fixed note naming the refusal, its delay the
    default backoff (as for a worker of up to 20 attempts), its state kept."""
    code = getattr(exc, "sqlstate", None)
    refusal = type(exc).__name__ + (f", SQLSTATE {code}" if code else "")
    error = storable_text(
        f"pgqueue could not record this attempt's outcome as given ({refusal}); this note replaces it"
    )
    delay = float(default_backoff(ack.attempt, 20)) if ack.state in _DELAYED_STATES else 0.0
    return ack._replace(delay=delay, error=error)


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
        #: acks a producer's fetch was refused with: written first, isolated, never taken again
        self._suspect: list[Ack] = []
        #: (job id, attempt) → how many times the database refused that ack alone
        self._refusals: dict[tuple[int, int], int] = {}
        #: set while a flush runs; another flush waits for it (see flush)
        self._flushing: anyio.Event | None = None
        self._wakeup = Wakeup(clock)
        self._idle = anyio.Event()
        self._idle.set()
        self.written = 0
        self.rejected = 0
        #: acks the database refused as given and that were written with a placeholder error
        self.replaced = 0
        #: acks that could not be written in any form (their jobs stay executing until rescued)
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Acks waiting to be written; producers stop fetching when it grows past their limit."""
        return len(self._pending) + len(self._suspect)

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

    def give_back(self, acks: list[Ack], *, suspect: bool = False) -> None:
        """Acks a producer took but could not write: the completer writes them after all.

        ``suspect``: the database refused them for their data; they are isolated from each other
        and from every fetch."""
        if acks:
            if suspect:
                self._suspect.extend(acks)
            else:
                self._pending[:0] = acks
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._wakeup.set()

    def taken_written(self, count: int, acked: int) -> None:
        """A producer wrote ``count`` taken acks, of which ``acked`` passed the fence; settle the
        books (and ``wait_idle``)."""
        self._count(count, acked)
        if not self.backlog:
            self._idle.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait(3600)
            if not self.backlog:
                continue
            # Let a burst gather: the acks of jobs finishing together go out in one statement.
            if len(self._pending) < self.max_batch and self.max_delay > 0 and not self._suspect:
                await self.clock.sleep(self.max_delay)
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending now, retrying on outages until it is written.

        One flush runs at a time (the service's own and a shutdown's wait for each other). Bound it
        with a cancel scope: when cancelled, whatever was not written is pending again."""
        # Not an anyio.Lock: acquiring one yields to the event loop even when it is free. With that
        # yield here the completer wrote a statement of its own per ten jobs at concurrency 10
        # (measured), where otherwise nearly every ack rides with a producer's fetch.
        while self._flushing is not None:
            await self._flushing.wait()
        self._flushing = flushing = anyio.Event()
        try:
            await self._flush()
        finally:
            self._flushing = None
            flushing.set()

    async def _flush(self) -> None:
        backoff = Backoff(0.05, 5.0)
        failures = 0
        while self.backlog:
            # Take the batch out before writing it: while the write awaits, a producer may take
            # the acks that are still pending to write them with its fetch.
            suspect = bool(self._suspect)
            source = self._suspect if suspect else self._pending
            batch = source[: self.max_batch]
            del source[: len(batch)]
            try:
                await self._write_isolating(batch, suspect=suspect)
            except Exception as exc:
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

    async def _write_isolating(self, batch: list[Ack], *, suspect: bool) -> None:
        """Write ``batch``, splitting it around acks the database refuses for their data.

        Any other failure (or a cancellation) puts every ack not yet written back at the head of
        the queue it came from (``suspect`` or pending) and propagates; acks written before it stay
        written (writing one twice is harmless: the fence refuses the second)."""
        parts = [batch]
        try:
            while parts:
                part = parts[-1]
                try:
                    await self._write(part)
                except Exception as exc:
                    if not is_row_error(exc):
                        raise
                    parts.pop()
                    if len(part) > 1:
                        middle = len(part) // 2
                        parts += [part[middle:], part[:middle]]  # the first half is written first
                    else:
                        replacement = self._replacement(part[0], exc)
                        if replacement is not None:
                            parts.append([replacement])
                    continue
                parts.pop()
                if self._refusals:
                    for ack in part:
                        self._refusals.pop((ack.job_id, ack.attempt), None)
        except BaseException:
            # Looked up now, not when the batch was taken: a producer's take() meanwhile replaced
            # the pending list with a new one, and the old one is that producer's.
            queue = self._suspect if suspect else self._pending
            for part in parts:
                queue[:0] = part
            raise

    def _replacement(self, ack: Ack, exc: Exception) -> Ack | None:
        """What to write for an ack the database refused alone: the placeholder first; if even that
        is refused, the bare state change; after that, nothing (the row itself is broken)."""
        key = (ack.job_id, ack.attempt)
        refusals = self._refusals.get(key, 0) + 1
        self._refusals[key] = refusals
        if refusals == 1:
            self.replaced += 1
            _log.warning(
                "pgqueue completer: the ack of job %d (attempt %d, %s) was refused (%s); "
                "writing it with a placeholder error instead",
                ack.job_id,
                ack.attempt,
                ack.state,
                describe_error(exc),
            )
            return placeholder(ack, exc)
        if refusals == 2:
            return ack._replace(error=None)
        del self._refusals[key]
        self.dropped += 1
        _log.error(
            "pgqueue completer: job %d refuses every form of its ack (%s); it stays executing "
            "until the lifeline's rescue_after",
            ack.job_id,
            describe_error(exc),
        )
        return None

    async def _write(self, batch: list[Ack]) -> None:
        started = self.clock.monotonic()
        async with self.pool.connection() as conn:
            params = fetch_params(batch, async_commit=self.async_commit)
            cursor = await conn.execute(ack_statement(self.queries, "fetch_jobs", batch), params)
            acked, _ = fetch_result(await cursor.fetchall())
        self._count(len(batch), acked)
        telemetry.emit(
            ("completer", "flush"),
            {"duration": self.clock.monotonic() - started, "count": len(batch), "acked": acked},
            {},
        )
