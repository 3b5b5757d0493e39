"""Jobs as typed values: the saved row (:class:`Job`) and the unsaved one (:class:`NewJob`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Job:
    """A job row as read from the database. Built positionally from ``RETURNING`` rows."""

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


@dataclass(frozen=True, slots=True)
class NewJob:
    """An unsaved job, built by ``Worker.new``; nothing touches the database until it is inserted."""

    worker: str
    args: dict[str, Any]
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 20
    tags: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    #: an absolute time, or None
    scheduled_at: datetime | None = None
    #: seconds from the database's now(), or None; used when scheduled_at is None
    schedule_in: float | None = None
    unique: UniqueSpec | None = None
    #: the 16-byte digest of the unique fields, when unique
    unique_key: bytes | None = None
    #: state → fields to overwrite on a unique conflict with a job in that state
    replace: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: encoded once at build time so inserting costs no more JSON work
    args_json: str = "{}"
    meta_json: str = "{}"

    @property
    def state(self) -> JobState:
        scheduled = self.scheduled_at is not None or self.schedule_in is not None
        return JobState.SCHEDULED if scheduled else JobState.AVAILABLE
