"""The exceptions pgqueue raises. Everything derives from :class:`PgQueueError`."""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "BatchClosedError",
    "ConfigError",
    "ForeignTableError",
    "JobFailedError",
    "JobNotFoundError",
    "MigrationError",
    "NotMigratedError",
    "PerformError",
    "PgQueueError",
    "ResultNotStoredError",
    "TimeoutError",
    "UnknownWorkerError",
    "WaitTimeoutError",
]


class PgQueueError(Exception):
    """Base class of every error raised by pgqueue."""


class ConfigError(PgQueueError, ValueError):
    """An option, argument or configuration value is invalid; the message names it."""


class MigrationError(PgQueueError):
    """The schema can't be migrated as asked."""


class ForeignTableError(MigrationError):
    """A table pgqueue would create already exists and was not created by pgqueue."""


class NotMigratedError(MigrationError):
    """The schema has not been migrated, or is behind the installed pgqueue."""


class JobNotFoundError(PgQueueError, LookupError):
    """No job has the given id."""


class UnknownWorkerError(PgQueueError):
    """A job names a worker that is not registered in this process."""


class PerformError(PgQueueError):
    """A job's ``perform`` returned an error, cancelled or discarded itself."""


class TimeoutError(PgQueueError):
    """A job ran past the timeout its worker allows."""


class WaitTimeoutError(PgQueueError, builtins.TimeoutError):
    """A job did not finish within the time :func:`pgqueue.wait` was given (the job is unaffected)."""

    def __init__(self, job_id: int, timeout: float, state: str) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s (it is {state})")
        self.job_id = job_id
        self.timeout = timeout
        self.state = state


class JobFailedError(PgQueueError):
    """The awaited job ended ``discarded`` or ``cancelled``; ``error`` is its final recorded error."""

    def __init__(self, job_id: int, state: str, error: str | None, errors: list[dict[str, Any]]) -> None:
        summary = (error or "no error recorded").split("\n", 1)[0]
        super().__init__(f"job {job_id} was {state}: {summary}")
        self.job_id = job_id
        self.state = state
        self.error = error
        self.errors = errors


class ResultNotStoredError(PgQueueError):
    """The awaited job completed, but its result could not be stored (too large, not JSON)."""

    def __init__(self, job_id: int, reason: str, marker: dict[str, Any]) -> None:
        super().__init__(f"job {job_id} completed but its result was not stored ({reason}): {marker}")
        self.job_id = job_id
        self.reason = reason
        self.marker = marker


class BatchClosedError(PgQueueError):
    """Jobs can't be added to a batch that has already finished (its callbacks have fired)."""
