"""Run one job, read top to bottom: resolve the worker → apply its timeout → perform → classify
the result → compute the backoff → hand the outcome to the completer → emit telemetry.

The executor never writes to the database itself: it produces an :class:`Ack`, which the runtime's
completer writes in batches and the testing helpers write at once (or not at all).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol

import anyio
import orjson
import psycopg
from psycopg import pq

from . import middleware, telemetry
from .backoff import default_backoff
from .errors import TimeoutError as JobTimeoutError
from .errors import UnknownWorkerError
from .job import Job, JobState
from .lifecycle import describe_error
from .middleware import Middleware
from .options import MAX_SECONDS
from .poison import storable_text
from .results import DEFAULT_RESULT_MAX_BYTES, encode_result, validate_max_bytes
from .store import Queries
from .worker import Cancel, Discard, Error, JobOutcome, Snooze, Worker, WorkerRegistry, registry

__all__ = [
    "Ack",
    "Cancellation",
    "Claim",
    "Execution",
    "Executor",
    "Outcome",
    "Performer",
    "ack_statement",
    "fetch_params",
    "fetch_result",
    "is_cancelled",
    "read_claim",
    "read_claim_sync",
]

_log = logging.getLogger("pgqueue.executor")


class Outcome:
    """How an attempt ended, as counted by ``drain_queue`` (Oban's names)."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    DISCARD = "discard"
    SNOOZED = "snoozed"


class Ack(NamedTuple):
    """What to write for one finished attempt; applied only if the job still runs this attempt."""

    job_id: int
    attempt: int
    state: JobState
    #: seconds from the database's now() until the job is due again (retryable, scheduled)
    delay: float = 0.0
    #: appended to the job's errors as {attempt, at, error}
    error: str | None = None
    #: the worker's return value, encoded (see :mod:`pgqueue.results`); only on completion
    result: orjson.Fragment | None = None
    #: the job belongs to a batch (meta.batch_id): written by the ``_batched`` fetch statement
    batched: bool = False


def fetch_params(
    acks: Sequence[Ack],
    *,
    queue: str = "",
    demand: int = 0,
    node: str = "",
    producer: str = "",
    async_commit: bool = False,
) -> dict[str, Any]:
    """The parameters of ``queries/fetch_jobs.sql``: ``acks`` to write and what to claim (by
    default nothing: an ack-only statement). The acks travel as one JSON document.

    ``async_commit`` lets the statement's commit skip waiting for its WAL flush (see
    ``Runtime(synchronous_acks=...)``); without it the connection's own setting applies."""
    document = []
    for ack in acks:
        item: dict[str, Any] = {"id": ack.job_id, "attempt": ack.attempt, "state": ack.state}
        if ack.delay:
            item["delay"] = float(ack.delay)
        if ack.error is not None:
            item["error"] = ack.error
        if ack.result is not None:
            item["result"] = ack.result
        document.append(item)
    return {
        "acks": orjson.dumps(document).decode(),
        "queue": queue,
        "demand": demand,
        "node": node,
        "producer": producer,
        "async_commit": async_commit,
    }


def ack_statement(queries: Queries, name: str, acks: Sequence[Ack]) -> str:
    """The fetch statement ``name`` to write ``acks`` with: its ``_batched`` twin when one of them
    is a batch member's (the accounting costs the others nothing), else as named."""
    for ack in acks:
        if ack.batched:
            return queries[name + "_batched"]
    return queries[name]


def fetch_result(rows: Sequence[Sequence[Any]], offset: int = 1) -> tuple[int, list[Job]]:
    """The result of ``queries/fetch_jobs.sql``: how many acks passed the fence, and the jobs
    claimed. It always has a row: with nothing claimed, one whose job columns are NULL.

    ``offset``: how many columns precede the job's (``fetch_limited.sql`` adds two)."""
    acked = int(rows[0][0])
    if rows[0][offset] is None:
        return acked, []
    return acked, [Job(*row[offset:]) for row in rows]


#: Claimed rows: (how many acks landed, the jobs decoded, a discarding ack per row that wasn't).
Claim = tuple[int, list[Job], list[Ack]]
# Columns of a fetch_jobs.sql row: the ack count, then the job's columns in Job's order.
_ATTEMPT_FIELD = Job._fields.index("attempt")


async def read_claim(cursor: psycopg.AsyncCursor[Any], offset: int = 1) -> Claim:
    """Read the result of ``queries/fetch_jobs.sql`` from ``cursor``: :func:`fetch_result`, except
    that a row which can't be decoded costs only itself.

    The claim has committed by now, so a row this client can't decode (jsonb nested deeper than
    orjson reads, a timestamp outside Python's years in this session's time zone) must not strand
    the others: they are decoded one by one, and the bad row gets an ack discarding it."""
    try:
        rows = await cursor.fetchall()
    except Exception:
        return await _read_row_by_row(cursor, offset)
    acked, jobs = fetch_result(rows, offset)
    return acked, jobs, []


def read_claim_sync(cursor: psycopg.Cursor[Any]) -> Claim:
    """The sync twin of :func:`read_claim`."""
    try:
        rows = cursor.fetchall()
    except Exception:
        result = cursor.pgresult
        assert result is not None
        jobs: list[Job] = []
        refused: list[Ack] = []
        for index in range(result.ntuples):
            cursor.scroll(index, mode="absolute")
            try:
                jobs.append(Job(*(cursor.fetchone() or ())[1:]))
            except Exception as exc:
                refused.append(_undecodable(result, index, exc, 1))
        return _raw_int(result, 0, 0), jobs, refused
    acked, jobs = fetch_result(rows)
    return acked, jobs, []


async def _read_row_by_row(cursor: psycopg.AsyncCursor[Any], offset: int) -> Claim:
    result = cursor.pgresult
    assert result is not None
    jobs: list[Job] = []
    refused: list[Ack] = []
    for index in range(result.ntuples):
        await cursor.scroll(index, mode="absolute")
        try:
            jobs.append(Job(*(await cursor.fetchone() or ())[offset:]))
        except Exception as exc:
            refused.append(_undecodable(result, index, exc, offset))
    return _raw_int(result, 0, 0), jobs, refused


def _undecodable(result: pq.abc.PGresult, index: int, exc: Exception, offset: int) -> Ack:
    # The id and attempt are read from the raw result: integers always decode.
    error = storable_text(
        f"pgqueue could not decode this job's row ({describe_error(exc)}); discarded without running"
    )
    job_id, attempt = _raw_int(result, index, offset), _raw_int(result, index, offset + _ATTEMPT_FIELD)
    return Ack(job_id, attempt, JobState.DISCARDED, error=error)


def _raw_int(result: pq.abc.PGresult, row: int, column: int) -> int:
    value = result.get_value(row, column)
    assert value is not None
    if result.fformat(column) == pq.Format.BINARY:
        return int.from_bytes(value, "big", signed=True)
    return int(value)


class Execution(NamedTuple):
    """The full story of one attempt, for the caller and for telemetry."""

    job: Job
    ack: Ack
    outcome: str
    result: Any = None
    exception: BaseException | None = None
    duration: float = 0.0


class Cancellation:
    """Handed to :meth:`Executor.execute` by whoever runs the job: set ``requested`` before
    cancelling the job's task to ask for a cancel (acked as ``cancelled``), as opposed to a
    shutdown abandoning it (not acked, left for the lifeline)."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False


_CANCELLED = object()


class _CancelFlag:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


_current_flag: ContextVar[_CancelFlag | None] = ContextVar("pgqueue_cancel_flag", default=None)


def is_cancelled() -> bool:
    """True when the job running in this context was asked to stop (a cancel or a timeout).

    Sync ``perform`` methods run in threads that can't be interrupted: check this in long loops.
    """
    flag = _current_flag.get()
    return flag is not None and flag.cancelled


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
        trace = "".join(traceback.format_exception(exc))
    except Exception:  # an exception whose __str__ raises must still be recorded
        message, trace = "", f"(the {name} could not be turned into text)"
    summary = f"{name}: {message}" if message else name
    return storable_text(f"{summary}\n\n{trace}")


def _outcome_error(outcome: JobOutcome) -> str:
    name = type(outcome).__name__
    if outcome.reason is None:
        return name
    try:
        reason = repr(outcome.reason)
    except Exception:  # a reason whose __repr__ raises
        reason = f"<unprintable {type(outcome.reason).__name__}>"
    return storable_text(f"{name}: {reason}")


class Performer(Protocol):
    """Somewhere else to run sync ``perform`` methods (:class:`pgqueue.processes.ProcessPool`):
    awaited instead of a thread; cancelling the await must stop the job."""

    def perform(self, job: Job) -> Awaitable[Any]: ...


class Executor:
    """Runs jobs through the worker registry; shared by the runtime and ``pgqueue.testing``.

    Sync ``perform`` methods run in threads, or in ``processes`` when given."""

    def __init__(
        self,
        workers: WorkerRegistry = registry,
        *,
        completer: Callable[[Ack], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        processes: Performer | None = None,
        middleware: Sequence[Middleware] = (),
        result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES,
    ) -> None:
        self.workers = workers
        #: a return value encoded larger than this is replaced by a marker (see pgqueue.results)
        self.result_max_bytes = validate_max_bytes(result_max_bytes)
        self.completer = completer
        self.clock = clock
        self.processes = processes
        #: this executor's own perform middleware, inside the process-wide chain
        self.middleware = tuple(middleware)

    async def execute(
        self,
        job: Job,
        *,
        thread_limiter: anyio.CapacityLimiter | None = None,
        cancellation: Cancellation | None = None,
        safe: bool = True,
    ) -> Execution:
        """Run ``job`` once and return what happened; with ``safe=False`` exceptions propagate."""
        started = self.clock()
        observed = telemetry.has_handlers()
        if observed:
            meta = {
                "job": job,
                "id": job.id,
                "queue": job.queue,
                "worker": job.worker,
                "attempt": job.attempt,
            }
            telemetry.emit(("job", "start"), {"system_time": time.time()}, meta)

        worker_cls = self.workers.get(job.worker)
        if worker_cls is None:
            execution = self._failure(job, None, UnknownWorkerError(f"unknown worker: {job.worker}"), started)
        elif not isinstance(job.args, dict):
            error = f"args must be a JSON object, got {type(job.args).__name__}"
            ack = Ack(job.id, job.attempt, JobState.DISCARDED, error=error)
            execution = Execution(job, ack, Outcome.DISCARD, duration=self.clock() - started)
        else:
            execution = await self._perform(worker_cls, job, thread_limiter, cancellation, safe, started)

        if isinstance(job.meta, dict) and "batch_id" in job.meta:
            execution = execution._replace(ack=execution.ack._replace(batched=True))
        if self.completer is not None:
            await self.completer(execution.ack)
        if not observed:
            return execution
        measurements = {"duration": execution.duration}
        stop_meta = {**meta, "state": execution.ack.state.value, "outcome": execution.outcome}
        if execution.exception is not None and execution.outcome in (Outcome.FAILURE, Outcome.DISCARD):
            telemetry.emit(("job", "exception"), measurements, {**stop_meta, "error": execution.exception})
        else:
            telemetry.emit(("job", "stop"), measurements, stop_meta)
        return execution

    async def _perform(
        self,
        worker_cls: type[Worker],
        job: Job,
        thread_limiter: anyio.CapacityLimiter | None,
        cancellation: Cancellation | None,
        safe: bool,
        started: float,
    ) -> Execution:
        worker = worker_cls()
        timeout: float | None = None
        try:
            timeout = worker.timeout(job)
            result = await self._call(worker, job, timeout, thread_limiter, cancellation)
        except JobOutcome as outcome:
            return self._classify(worker, job, outcome, started)
        except JobTimeoutError as exc:
            if not safe:
                raise
            return self._failure(job, worker, exc, started)
        except Exception as exc:
            if not safe:
                raise
            return self._failure(job, worker, exc, started)
        if result is _CANCELLED:
            return self._classify(worker, job, Cancel("cancelled while executing"), started)
        return self._classify(worker, job, result, started)

    async def _call(
        self,
        worker: Worker,
        job: Job,
        timeout: float | None,
        thread_limiter: anyio.CapacityLimiter | None,
        cancellation: Cancellation | None,
    ) -> Any:
        flag = _CancelFlag()
        token = _current_flag.set(flag)
        # Plain asyncio here, not anyio scopes: this runs once per job, and a cancel scope per job
        # costs measurable time. The timeout schedules nothing when there is none.
        timer = asyncio.timeout(timeout) if timeout is not None else None
        try:
            chain = (
                middleware.installed() + self.middleware if middleware.installed() or self.middleware else ()
            )
            call: Awaitable[Any]
            if chain:
                call = middleware.run_perform(chain, job, lambda: self._start(worker, job, thread_limiter))
            else:
                call = self._start(worker, job, thread_limiter)
            if timer is None:
                return await call
            async with timer:
                return await call
        except TimeoutError:
            if timer is not None and timer.expired():
                flag.cancelled = True
                raise JobTimeoutError(f"{job.worker} timed out after {_seconds(timeout)}") from None
            raise
        except asyncio.CancelledError:
            # Either a cancel request for this job, or the node abandoning it at shutdown past the
            # grace period. A sync perform still running in its thread must hear both, or it runs
            # on after its node said goodbye (while the lifeline hands the job elsewhere).
            flag.cancelled = True
            if cancellation is not None and cancellation.requested:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                return _CANCELLED
            raise
        finally:
            _current_flag.reset(token)

    def _start(
        self, worker: Worker, job: Job, thread_limiter: anyio.CapacityLimiter | None
    ) -> Awaitable[Any]:
        if worker.is_async:
            return worker.perform(job)  # type: ignore[no-any-return]
        if self.processes is not None:
            # Cancelling this await (timeout, cancel, shutdown) kills the process running it.
            return self.processes.perform(job)
        # abandon_on_cancel: a sync perform can't be interrupted; on timeout or cancel we stop
        # waiting for it and raise its flag (see is_cancelled()).
        return anyio.to_thread.run_sync(worker.perform, job, limiter=thread_limiter, abandon_on_cancel=True)

    def _classify(self, worker: Worker, job: Job, result: Any, started: float) -> Execution:
        duration = self.clock() - started
        if result is None:  # the common case first: perform returned nothing, the job is done
            return Execution(
                job, Ack(job.id, job.attempt, JobState.COMPLETED), Outcome.SUCCESS, None, None, duration
            )
        if isinstance(result, Snooze):
            ack = Ack(job.id, job.attempt, JobState.SCHEDULED, delay=result.seconds)
            return Execution(job, ack, Outcome.SNOOZED, result, duration=duration)
        if isinstance(result, Cancel):
            ack = Ack(job.id, job.attempt, JobState.CANCELLED, error=_outcome_error(result))
            return Execution(job, ack, Outcome.CANCELLED, result, duration=duration)
        if isinstance(result, Discard):
            ack = Ack(job.id, job.attempt, JobState.DISCARDED, error=_outcome_error(result))
            return Execution(job, ack, Outcome.DISCARD, result, duration=duration)
        if isinstance(result, Error):
            return self._failure(job, worker, result, started, result=result)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            problem = TypeError("perform returned an awaitable it never awaited (a missing `await`?)")
            return self._failure(job, worker, problem, started, result=result)
        if isinstance(result, BaseException):
            return self._failure(job, worker, result, started, result=result)
        encoded = encode_result(result, job.id, job.worker, self.result_max_bytes)
        ack = Ack(job.id, job.attempt, JobState.COMPLETED, result=encoded)
        return Execution(job, ack, Outcome.SUCCESS, result, duration=duration)

    def _failure(
        self, job: Job, worker: Worker | None, exc: BaseException, started: float, *, result: Any = None
    ) -> Execution:
        duration = self.clock() - started
        error = _outcome_error(exc) if isinstance(exc, JobOutcome) else _describe(exc)
        if job.attempt >= job.max_attempts:
            ack = Ack(job.id, job.attempt, JobState.DISCARDED, error=error)
            return Execution(job, ack, Outcome.DISCARD, result, exc, duration)
        ack = Ack(job.id, job.attempt, JobState.RETRYABLE, delay=self._backoff(worker, job), error=error)
        return Execution(job, ack, Outcome.FAILURE, result, exc, duration)

    def _backoff(self, worker: Worker | None, job: Job) -> float:
        if worker is not None:
            try:
                delay = float(worker.backoff(job))
                # Bounded like schedule_in: now() + 2**50 s is past PostgreSQL's timestamps, and an
                # ack it can't write must never reach the batch it would fail.
                if math.isfinite(delay) and 0 <= delay <= MAX_SECONDS:
                    return delay
                _log.warning(
                    "%s.backoff returned %r, outside 0..%g seconds; using the default backoff",
                    job.worker,
                    delay,
                    MAX_SECONDS,
                )
            except Exception:
                _log.exception("%s.backoff failed; using the default backoff", job.worker)
        return float(default_backoff(job.attempt, job.max_attempts))


def _seconds(value: float | None) -> str:
    if value is None:
        return "∞"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"
