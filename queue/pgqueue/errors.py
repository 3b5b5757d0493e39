"""The exceptions pgqueue raises. Everything derives from :class:`PgQueueError`."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ForeignTableError",
    "JobNotFoundError",
    "MigrationError",
    "NotMigratedError",
    "PerformError",
    "PgQueueError",
    "TimeoutError",
    "UnknownWorkerError",
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
