"""What a test expects to be enqueued: :func:`all_enqueued`, :func:`assert_enqueued` (waiting up to
a timeout for it) and :func:`refute_enqueued`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ..errors import ConfigError
from ..job import Job, JobState
from ..manage import JobFilter, all_jobs
from ..worker import Worker

__all__ = ["all_enqueued", "assert_enqueued", "refute_enqueued"]


def _subset(expected: Any, actual: Any) -> bool:
    """Recursive subset match: dicts by key, "_" matches any present value, the rest by equality."""
    if expected == "_":
        return True
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _subset(value, actual[key]) for key, value in expected.items()
        )
    return bool(expected == actual)


def _near(expected: datetime | tuple[datetime, float], actual: datetime) -> bool:
    when, delta = expected if isinstance(expected, tuple) else (expected, 1.0)
    return abs((actual - when).total_seconds()) <= delta


def _matches(job: Job, criteria: Mapping[str, Any]) -> bool:
    for key, expected in criteria.items():
        if key in ("args", "meta"):
            if not _subset(json.loads(json.dumps(expected)), getattr(job, key)):
                return False
        elif key == "scheduled_at":
            if not _near(expected, job.scheduled_at):
                return False
        elif key == "scheduled_in":
            seconds, delta = expected if isinstance(expected, tuple) else (expected, 1.0)
            target = datetime.now(UTC) + timedelta(seconds=seconds)
            if not _near((target, delta), job.scheduled_at):
                return False
        elif key == "tags":
            if not set(expected) <= set(job.tags):
                return False
        elif getattr(job, key) != expected:
            return False
    return True


_CRITERIA = frozenset(
    {"worker", "queue", "args", "meta", "tags", "priority", "max_attempts", "scheduled_at", "scheduled_in"}
)


def _criteria(worker: type[Worker] | str | None, criteria: dict[str, Any]) -> dict[str, Any]:
    unknown = set(criteria) - _CRITERIA
    if unknown:
        raise ConfigError(
            f"unknown criterion {sorted(unknown)[0]!r}; valid: {sorted(_CRITERIA | {'worker'})}"
        )
    if worker is not None:
        criteria["worker"] = worker if isinstance(worker, str) else worker.name
    return criteria


def all_enqueued(
    target: Any, worker: type[Worker] | str | None = None, *, schema: str = "public", **criteria: Any
) -> list[Job]:
    """Jobs waiting to run (available or scheduled) that match, newest first.

    ``args``/``meta`` match as a recursive subset ("_" only requires the key); ``scheduled_at``
    within ±1 s (or ``(datetime, delta)``); ``scheduled_in`` seconds from now likewise; ``tags``
    as a subset; anything else (queue, priority, max_attempts) by equality.
    """
    wanted = _criteria(worker, dict(criteria))
    job_filter = JobFilter(state=[JobState.AVAILABLE.value, JobState.SCHEDULED.value])
    return [
        job for job in all_jobs(target, job_filter, schema=schema, limit=100_000) if _matches(job, wanted)
    ]


def _describe(jobs: Sequence[Job], keys: Sequence[str]) -> str:
    if not jobs:
        return "no jobs are enqueued"
    shown = [
        {k: getattr(j, k) for k in (keys or ("worker", "queue", "args")) if k in Job._fields} for j in jobs
    ]
    return "enqueued jobs:\n" + "\n".join(f"  {s}" for s in shown[:20])


def _rollback_if_idle_in_error(target: Any) -> None:
    conn = target if isinstance(target, psycopg.Connection) else None
    if conn is not None and conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()


def assert_enqueued(
    target: Any,
    worker: type[Worker] | str | None = None,
    *,
    schema: str = "public",
    timeout: float | None = None,
    **criteria: Any,
) -> Job:
    """Assert a matching job is enqueued (polling up to ``timeout`` seconds); return it."""
    for found in _poll_enqueued(target, worker, schema, timeout, criteria):
        if found:
            return found[0]
    wanted = _criteria(worker, dict(criteria))
    everything = all_enqueued(target, schema=schema)
    raise AssertionError(f"expected a job matching {wanted}; {_describe(everything, list(criteria))}")


def refute_enqueued(
    target: Any,
    worker: type[Worker] | str | None = None,
    *,
    schema: str = "public",
    timeout: float | None = None,
    **criteria: Any,
) -> None:
    """Assert no matching job is enqueued, now and (with ``timeout``) for that many seconds."""
    for found in _poll_enqueued(target, worker, schema, timeout, criteria):
        if found:
            wanted = _criteria(worker, dict(criteria))
            raise AssertionError(f"expected no job matching {wanted}; {_describe(found, list(criteria))}")


def _poll_enqueued(
    target: Any,
    worker: type[Worker] | str | None,
    schema: str,
    timeout: float | None,
    criteria: dict[str, Any],
) -> Iterator[list[Job]]:
    """The matching jobs, read once, then every 10 ms until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + (timeout or 0)
    while True:
        yield all_enqueued(target, worker, schema=schema, **criteria)
        if time.monotonic() >= deadline:
            return
        _commit_snapshot(target)
        time.sleep(0.01)


def _commit_snapshot(target: Any) -> None:
    # Polling from inside a REPEATABLE READ transaction would never see new jobs; a psycopg
    # connection that is idle in a transaction we only read in is safe to roll back.
    _rollback_if_idle_in_error(target)
