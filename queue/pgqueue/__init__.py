"""pgqueue: a PostgreSQL-native job queue with Oban's semantics.

Jobs live in a ``jobs`` table and are enqueued inside the application's own transaction::

    class Resize(pgqueue.Worker, queue="media", max_attempts=5):
        async def perform(self, job: pgqueue.Job) -> None: ...

    pgqueue.insert(conn_or_session, Resize.new({"image_id": 7}, schedule_in=30))
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    ForeignTableError,
    JobNotFoundError,
    MigrationError,
    NotMigratedError,
    PgQueueError,
    UnknownWorkerError,
)
from .executor import is_cancelled
from .insert import UniqueConflictError, ainsert, ainsert_all, insert, insert_all
from .job import Job, JobState, NewJob
from .manage import (
    JobFilter,
    JobLockedError,
    aall_jobs,
    acancel_all_jobs,
    acancel_job,
    adelete_all_jobs,
    adelete_job,
    aget_job,
    all_jobs,
    aretry_all_jobs,
    aretry_job,
    aupdate_job,
    cancel_all_jobs,
    cancel_job,
    delete_all_jobs,
    delete_job,
    get_job,
    retry_all_jobs,
    retry_job,
    update_job,
)
from .typed import ArgsError, TypedWorker
from .worker import Cancel, Discard, Error, JobOutcome, Snooze, Worker

__version__ = "0.1.0"

#: What a ``perform`` may return: None or any value for success, or an outcome.
Result = object

__all__ = [
    "ArgsError",
    "Cancel",
    "ConfigError",
    "Discard",
    "Error",
    "ForeignTableError",
    "Job",
    "JobFilter",
    "JobLockedError",
    "JobNotFoundError",
    "JobOutcome",
    "JobState",
    "MigrationError",
    "NewJob",
    "NotMigratedError",
    "PgQueueError",
    "Result",
    "Snooze",
    "TypedWorker",
    "UniqueConflictError",
    "UnknownWorkerError",
    "Worker",
    "__version__",
    "aall_jobs",
    "acancel_all_jobs",
    "acancel_job",
    "adelete_all_jobs",
    "adelete_job",
    "aget_job",
    "ainsert",
    "ainsert_all",
    "all_jobs",
    "aretry_all_jobs",
    "aretry_job",
    "aupdate_job",
    "cancel_all_jobs",
    "cancel_job",
    "delete_all_jobs",
    "delete_job",
    "get_job",
    "insert",
    "insert_all",
    "is_cancelled",
    "retry_all_jobs",
    "retry_job",
    "update_job",
]
