"""Chunks: a worker that receives up to ``chunk_size`` jobs at once, or what came within
``chunk_timeout`` seconds, and whose jobs are acked together.

::

    class SendEmails(pgqueue.ChunkWorker, queue="mail", chunk_size=100, chunk_timeout=0.5):
        async def perform_chunk(self, jobs: list[pgqueue.Job]) -> None:
            await provider.send_many([job.args for job in jobs])

Every job of the chunk is still an ordinary job: it is claimed, counted against the queue's limit
and acked on its own row; the jobs of a chunk finish at the same moment, so the completer writes
their acks in one statement. ``perform_chunk`` returns None (every job succeeded) or a mapping of
job id → what ``perform`` would have returned for that job (a value recorded as its result,
``Snooze``, ``Cancel``, ``Discard``, ``Error`` or an exception); ids left out succeeded. An
exception raised by ``perform_chunk`` fails every job of the chunk (each retried on its own).

A chunk fills only with jobs that run at once: give the queue a ``limit`` of at least
``chunk_size``. A job cancelled while it waits for its chunk leaves it; the worker's ``timeout``
counts the wait.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio.to_thread

from .errors import ConfigError
from .job import Job
from .worker import Worker

__all__ = ["ChunkWorker"]

_MAX_CHUNK = 10_000


class _Gatherer:
    """The jobs of one chunk worker waiting for their chunk, on one event loop."""

    def __init__(self, worker: type[ChunkWorker], loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.loop = loop
        self.pending: list[tuple[Job, asyncio.Future[Any]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.running: set[asyncio.Task[None]] = set()

    def submit(self, job: Job) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pending.append((job, future))
        if len(self.pending) >= self.worker.chunk_size:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.worker.chunk_timeout, self.flush)
        return future

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        chunk = [(job, future) for job, future in self.pending if not future.done()]
        self.pending = []
        if chunk:
            # A task of its own, not any job's: cancelling one job must not stop its chunk.
            task = self.loop.create_task(self._run(chunk))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, chunk: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        jobs = [job for job, _ in chunk]
        try:
            instance = self.worker()
            if inspect.iscoroutinefunction(instance.perform_chunk):
                outcomes = await instance.perform_chunk(jobs)
            else:
                outcomes = await anyio.to_thread.run_sync(instance.perform_chunk, jobs)
            if outcomes is not None and not isinstance(outcomes, Mapping):
                raise TypeError(
                    f"perform_chunk must return None or a mapping of job id to outcome, "
                    f"got {type(outcomes).__name__}"
                )
        except Exception as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        for job, future in chunk:
            if not future.done():
                future.set_result((outcomes or {}).get(job.id))


class ChunkWorker(Worker, abstract=True):
    """A worker whose jobs are performed together, up to ``chunk_size`` at a time: define
    ``perform_chunk(self, jobs)`` (async or sync) instead of ``perform``."""

    #: the most jobs in one chunk
    chunk_size: ClassVar[int] = 100
    #: seconds the first job of a chunk waits for others before the chunk runs as it is
    chunk_timeout: ClassVar[float] = 1.0
    _gatherers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gatherer]]

    def __init_subclass__(
        cls, *, chunk_size: int | None = None, chunk_timeout: float | None = None, **options: Any
    ) -> None:
        where = f"worker {cls.__module__}.{cls.__qualname__}"
        size = cls.chunk_size if chunk_size is None else chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_CHUNK:
            raise ConfigError(f"{where}: chunk_size must be an integer 1..{_MAX_CHUNK}, got {size!r}")
        wait = cls.chunk_timeout if chunk_timeout is None else chunk_timeout
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= 3600:
            raise ConfigError(f"{where}: chunk_timeout must be seconds in (0, 3600], got {wait!r}")
        if "perform" in cls.__dict__:
            raise ConfigError(f"{where}: a ChunkWorker defines perform_chunk(self, jobs), not perform")
        if not options.get("abstract") and cls.perform_chunk is ChunkWorker.perform_chunk:
            raise ConfigError(f"{where}: define perform_chunk(self, jobs)")
        cls.chunk_size = size
        cls.chunk_timeout = float(wait)
        cls._gatherers = weakref.WeakKeyDictionary()
        super().__init_subclass__(**options)

    def perform_chunk(self, jobs: list[Job]) -> Mapping[int, Any] | None:
        """Perform ``jobs`` together; return None, or job id → that job's outcome."""
        raise TypeError(f"{type(self).__name__} does not define perform_chunk(self, jobs)")

    async def perform(self, job: Job) -> Any:
        cls = type(self)
        loop = asyncio.get_running_loop()
        gatherer = cls._gatherers.get(loop)
        if gatherer is None:
            gatherer = cls._gatherers[loop] = _Gatherer(cls, loop)
        return await gatherer.submit(job)
