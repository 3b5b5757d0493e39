"""pgqueue: a PostgreSQL-native job queue with Oban's semantics.

Jobs live in a ``jobs`` table and are enqueued inside the application's own transaction::

    class Resize(pgqueue.Worker, queue="media", max_attempts=5):
        async def perform(self, job: pgqueue.Job) -> None: ...

    pgqueue.insert(conn_or_session, Resize.new({"image_id": 7}, schedule_in=30))
"""

from __future__ import annotations

from .batches import (
    Batch,
    BatchNotFoundError,
    BatchProgress,
    aadd_to_batch,
    abatch_progress,
    add_to_batch,
    ainsert_batch,
    batch_progress,
    insert_batch,
)
from .chunks import ChunkWorker
from .cron_entries import (
    CronNotFoundError,
    CronRow,
    aadd_cron,
    add_cron,
    adelete_cron,
    alist_crons,
    aupdate_cron,
    delete_cron,
    list_crons,
    update_cron,
)
from .errors import (
    BatchClosedError,
    ConfigError,
    ForeignTableError,
    JobFailedError,
    JobNotFoundError,
    MigrationError,
    NotMigratedError,
    PgQueueError,
    ResultNotStoredError,
    UnknownWorkerError,
    WaitTimeoutError,
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
from .middleware import Middleware
from .queue_config import QueueConfig
from .queues import (
    QueueInfo,
    QueueNotFoundError,
    aadd_queue,
    add_queue,
    adelete_queue,
    aget_queue,
    alist_queues,
    aupdate_queue,
    delete_queue,
    get_queue,
    list_queues,
    update_queue,
)
from .runtime import Runtime
from .typed import ArgsError, TypedWorker
from .waiting import await_job, wait
from .worker import Cancel, Discard, Error, JobOutcome, Snooze, Worker
from .workflow import (
    DependencyCycleError,
    MissingDependencyError,
    Workflow,
    WorkflowError,
    ainsert_workflow,
    insert_workflow,
)
from .workflow_signals import (
    Dependency,
    ReceivedSignal,
    SignalError,
    adependencies,
    asignal,
    dependencies,
    received_signal,
    signal,
)

__version__ = "0.1.0"

#: What a ``perform`` may return: None or any value for success, or an outcome.
Result = object

__all__ = [
    "ArgsError",
    "Batch",
    "BatchClosedError",
    "BatchNotFoundError",
    "BatchProgress",
    "Cancel",
    "ChunkWorker",
    "ConfigError",
    "CronNotFoundError",
    "CronRow",
    "Dependency",
    "DependencyCycleError",
    "Discard",
    "Error",
    "ForeignTableError",
    "Job",
    "JobFailedError",
    "JobFilter",
    "JobLockedError",
    "JobNotFoundError",
    "JobOutcome",
    "JobState",
    "Middleware",
    "MigrationError",
    "MissingDependencyError",
    "NewJob",
    "NotMigratedError",
    "PgQueueError",
    "QueueConfig",
    "QueueInfo",
    "QueueNotFoundError",
    "ReceivedSignal",
    "Result",
    "ResultNotStoredError",
    "Runtime",
    "SignalError",
    "Snooze",
    "TypedWorker",
    "UniqueConflictError",
    "UnknownWorkerError",
    "WaitTimeoutError",
    "Worker",
    "Workflow",
    "WorkflowError",
    "__version__",
    "aadd_cron",
    "aadd_queue",
    "aadd_to_batch",
    "aall_jobs",
    "abatch_progress",
    "acancel_all_jobs",
    "acancel_job",
    "add_cron",
    "add_queue",
    "add_to_batch",
    "adelete_all_jobs",
    "adelete_cron",
    "adelete_job",
    "adelete_queue",
    "adependencies",
    "aget_job",
    "aget_queue",
    "ainsert",
    "ainsert_all",
    "ainsert_batch",
    "ainsert_workflow",
    "alist_crons",
    "alist_queues",
    "all_jobs",
    "aretry_all_jobs",
    "aretry_job",
    "asignal",
    "aupdate_cron",
    "aupdate_job",
    "aupdate_queue",
    "await_job",
    "batch_progress",
    "cancel_all_jobs",
    "cancel_job",
    "delete_all_jobs",
    "delete_cron",
    "delete_job",
    "delete_queue",
    "dependencies",
    "get_job",
    "get_queue",
    "insert",
    "insert_all",
    "insert_batch",
    "insert_workflow",
    "is_cancelled",
    "list_crons",
    "list_queues",
    "received_signal",
    "retry_all_jobs",
    "retry_job",
    "signal",
    "update_cron",
    "update_job",
    "update_queue",
    "wait",
]
