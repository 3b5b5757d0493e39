"""pgqueue: a PostgreSQL-native job queue with Oban's semantics.

Jobs live in a ``jobs`` table and are enqueued inside the application's own transaction.
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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ForeignTableError",
    "JobNotFoundError",
    "MigrationError",
    "NotMigratedError",
    "PgQueueError",
    "UnknownWorkerError",
    "__version__",
]
