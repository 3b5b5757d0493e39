"""Jobs as typed values: the saved row (:class:`Job`) and the unsaved one (:class:`NewJob`)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

__all__ = ["JOB_COLUMNS", "Job", "JobState", "NewJob", "UniqueSpec"]


class JobState(enum.StrEnum):
    """Where a job is in its life. Only ``available`` jobs are fetched."""

    AVAILABLE = "available"
    SCHEDULED = "scheduled"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


class _Waiters:
    """Where :meth:`Job.result` finds the waiting code. The job type is the lowest layer and
    imports nothing above it; :mod:`pgqueue.waiting`, which ``import pgqueue`` always loads,
    hands its functions over here when it is imported."""

    def __init__(self) -> None:
        self.wait: Callable[..., Any] = self._missing
        self.await_job: Callable[..., Awaitable[Any]] = self._missing

    @staticmethod
    def _missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pgqueue.waiting is not loaded: import pgqueue")

    def register(self, wait: Callable[..., Any], await_job: Callable[..., Awaitable[Any]]) -> None:
        self.wait, self.await_job = wait, await_job


_waiters = _Waiters()


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})


class Job(NamedTuple):
    """A job row as read from the database. Built positionally from ``RETURNING`` rows.

    An immutable named tuple rather than a frozen dataclass: producers build one per fetched row
    and ``insert_all`` one per inserted job, and a tuple costs a tenth as much to build (a frozen
    dataclass sets each of its 19 fields through ``object.__setattr__``). ``job._replace(...)``
    gives a changed copy.
    """

    id: int
    state: str
    queue: str
    worker: str
    args: Any
    meta: dict[str, Any]
    tags: list[str]
    errors: list[dict[str, Any]]
    attempt: int
    max_attempts: int
    priority: int
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    attempted_by: list[str] | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    discarded_at: datetime | None
    #: True when an insert found an existing unique job and returned it instead.
    conflict: bool = False

    def result(self, target: Any, timeout: float | None = None, *, schema: str = "public") -> Any:
        """Block until this job finishes and return its result: ``pgqueue.wait(target, job, ...)``.

        ``target`` is a DSN or a psycopg ``Connection`` outside a transaction (a job doesn't
        remember the connection that inserted it). A completed job gives what its worker returned;
        a discarded or cancelled one raises :class:`~pgqueue.errors.JobFailedError`, a pruned one
        :class:`~pgqueue.errors.JobNotFoundError`, running out of time
        :class:`~pgqueue.errors.WaitTimeoutError`.
        """
        return _waiters.wait(target, self, timeout, schema=schema)

    async def aresult(self, target: Any, timeout: float | None = None, *, schema: str = "public") -> Any:
        """The async twin of :meth:`result`: ``await job.aresult(dsn_or_async_conn, timeout=5)``."""
        return await _waiters.await_job(target, self, timeout, schema=schema)


#: The column list every job-returning statement selects, in :class:`Job` field order.
JOB_COLUMNS = (
    "id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, inserted_at, "
    "scheduled_at, attempted_at, attempted_by, completed_at, cancelled_at, discarded_at"
)


@dataclass(frozen=True, slots=True)
class UniqueSpec:
    """A compiled ``unique`` option: what makes two jobs the same, for how long, in which states."""

    fields: tuple[str, ...]
    keys: tuple[str, ...]
    #: seconds, or None for "forever"
    period: float | None
    states: tuple[JobState, ...]
    timestamp: str  # "inserted_at" or "scheduled_at"


class NewJob(NamedTuple):
    """An unsaved job, built (and validated) by ``Worker.new``; nothing touches the database
    until it is inserted. A named tuple for the same reason as :class:`Job`: bulk inserts build
    one per job."""

    worker: str
    args: dict[str, Any]
    queue: str
    priority: int
    max_attempts: int
    tags: tuple[str, ...]
    meta: dict[str, Any]
    #: an absolute time, or None
    scheduled_at: datetime | None
    #: seconds from the database's now(), or None; used when scheduled_at is None
    schedule_in: float | None
    unique: UniqueSpec | None
    #: the 16-byte digest of the unique fields, when unique
    unique_key: bytes | None
    #: state → fields to overwrite on a unique conflict with a job in that state
    replace: dict[str, tuple[str, ...]]
    #: encoded once at build time so inserting costs no more JSON work
    args_json: str
    meta_json: str

    @property
    def state(self) -> JobState:
        scheduled = self.scheduled_at is not None or self.schedule_in is not None
        return JobState.SCHEDULED if scheduled else JobState.AVAILABLE
