"""Manage jobs that exist: get, query, cancel, retry, delete and update them.

Each operation is built once as an :class:`_Operation` (statement, parameters, how to read the
rows) and run by a sync or an async executor, so the twins (``cancel_job`` / ``acancel_job`` …)
share all their logic. ``target`` is anything :mod:`pgqueue.insert` accepts; the change happens in
that connection's transaction (commit it to make it stick). State rules follow Oban:

* cancel: any job that hasn't finished (completed, discarded, cancelled) becomes ``cancelled``;
  an executing one is also stopped on whichever node runs it.
* retry: any job that isn't available or executing becomes ``available`` now; a job out of
  attempts gets one more.
* delete: any job except an executing one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg.rows import tuple_row

from . import options as opt
from .errors import ConfigError, JobNotFoundError, PgQueueError
from .job import Job
from .store import JobFilter, channel_name, filtered, queries_for
from .targets import async_connection, sync_executor

__all__ = [
    "JobFilter",
    "JobLockedError",
    "aall_jobs",
    "acancel_all_jobs",
    "acancel_job",
    "adelete_all_jobs",
    "adelete_job",
    "aget_job",
    "all_jobs",
    "aretry_all_jobs",
    "aretry_job",
    "aupdate_job",
    "cancel_all_jobs",
    "cancel_job",
    "delete_all_jobs",
    "delete_job",
    "get_job",
    "retry_all_jobs",
    "retry_job",
    "update_job",
]

T = TypeVar("T")
_DEFAULT_LIMIT = 1000


class JobLockedError(PgQueueError):
    """The job is locked by another transaction right now; try again."""


@dataclass(frozen=True, slots=True)
class _Operation(Generic[T]):
    statement: str
    params: dict[str, Any]
    read: Callable[[list[tuple[Any, ...]]], T]


def _run(target: Any, op: _Operation[T]) -> T:
    return op.read(sync_executor(target)(op.statement, op.params))


async def _arun(target: Any, op: _Operation[T]) -> T:
    conn = await async_connection(target)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(op.statement, op.params)
        rows = await cur.fetchall() if cur.description else []
    return op.read(rows)


def _count(rows: list[tuple[Any, ...]]) -> int:
    return len(rows)


def _jobs(rows: list[tuple[Any, ...]]) -> list[Job]:
    return [Job(*row) for row in rows]


def _filter_for(job_or_filter: JobFilter | None) -> JobFilter:
    return job_or_filter if job_or_filter is not None else JobFilter()


def _job_id(job: Job | int) -> int:
    job_id = job.id if isinstance(job, Job) else job
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise ConfigError(f"job must be a Job or an integer id, got {job!r}")
    return job_id


def _one(job: Job | int) -> JobFilter:
    return JobFilter(ids=[_job_id(job)])


def _cancel(schema: str, job_filter: JobFilter) -> _Operation[int]:
    statement, params = filtered("cancel_jobs", schema, job_filter)
    return _Operation(statement, {**params, "channel": channel_name(schema, "signal")}, _count)


def _retry(schema: str, job_filter: JobFilter) -> _Operation[int]:
    statement, params = filtered("retry_jobs", schema, job_filter)
    return _Operation(statement, params, _count)


def _delete(schema: str, job_filter: JobFilter) -> _Operation[int]:
    statement, params = filtered("delete_jobs", schema, job_filter)
    return _Operation(statement, params, _count)


def _select(schema: str, job_filter: JobFilter, limit: int) -> _Operation[list[Job]]:
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    statement, params = filtered("select_jobs", schema, job_filter)
    return _Operation(statement, {**params, "limit": limit}, _jobs)


def _first_job(rows: list[tuple[Any, ...]]) -> Job | None:
    return Job(*rows[0]) if rows else None


# -- sync ---------------------------------------------------------------------------------------


def _get(schema: str, job_id: int) -> _Operation[Job | None]:
    op = _select(schema, _one(job_id), 1)
    return _Operation(op.statement, op.params, _first_job)


def get_job(target: Any, job_id: int, *, schema: str = "public") -> Job | None:
    """The job with ``job_id``, or None."""
    return _run(target, _get(schema, job_id))


def all_jobs(
    target: Any, job_filter: JobFilter | None = None, *, schema: str = "public", limit: int = _DEFAULT_LIMIT
) -> list[Job]:
    """Jobs matching ``job_filter`` (all when None), newest first, at most ``limit``."""
    return _run(target, _select(schema, _filter_for(job_filter), limit))


def cancel_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """Cancel one job; True when it changed (False when it had already finished or doesn't exist)."""
    return _run(target, _cancel(schema, _one(job))) > 0


def cancel_all_jobs(target: Any, job_filter: JobFilter | None = None, *, schema: str = "public") -> int:
    """Cancel every unfinished job matching ``job_filter``; returns how many changed."""
    return _run(target, _cancel(schema, _filter_for(job_filter)))


def retry_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """Make one job available again now; True when it changed."""
    return _run(target, _retry(schema, _one(job))) > 0


def retry_all_jobs(target: Any, job_filter: JobFilter | None = None, *, schema: str = "public") -> int:
    """Retry every matching job that isn't available or executing; returns how many changed."""
    return _run(target, _retry(schema, _filter_for(job_filter)))


def delete_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """Delete one job unless it is executing; True when it was deleted."""
    return _run(target, _delete(schema, _one(job))) > 0


def delete_all_jobs(target: Any, job_filter: JobFilter | None = None, *, schema: str = "public") -> int:
    """Delete every matching job except executing ones; returns how many were deleted."""
    return _run(target, _delete(schema, _filter_for(job_filter)))


_UPDATABLE = ("args", "max_attempts", "meta", "priority", "queue", "scheduled_at", "tags", "worker")


def _update_params(job_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(_UPDATABLE)
    if unknown:
        raise ConfigError(f"can't update {sorted(unknown)[0]!r}; updatable fields: {list(_UPDATABLE)}")
    params: dict[str, Any] = {f"set_{name}": name in changes for name in _UPDATABLE}
    params.update(dict.fromkeys(_UPDATABLE), id=job_id)
    if "args" in changes:
        params["args"] = opt.encode_json_object(changes["args"], "args")
    if "meta" in changes:
        params["meta"] = opt.encode_json_object(changes["meta"], "meta")
    if "max_attempts" in changes:
        params["max_attempts"] = opt.validate_max_attempts(changes["max_attempts"])
    if "priority" in changes:
        params["priority"] = opt.validate_priority(changes["priority"])
    if "queue" in changes:
        params["queue"] = opt.validate_queue(changes["queue"])
    if "scheduled_at" in changes:
        params["scheduled_at"] = opt.validate_scheduled_at(changes["scheduled_at"])
    if "tags" in changes:
        params["tags"] = json.dumps(opt.normalize_tags(changes["tags"]))
    if "worker" in changes:
        worker = changes["worker"]
        if not isinstance(worker, str) or not 0 < len(worker) <= 255:
            raise ConfigError(f"worker must be a string of 1..255 characters, got {worker!r}")
        params["worker"] = worker
    return params


def _resolve_changes(
    job: Job, changes: Mapping[str, Any] | Callable[[Job], Mapping[str, Any]]
) -> Mapping[str, Any]:
    return changes(job) if callable(changes) else changes


def update_job(
    target: Any,
    job: Job | int,
    changes: Mapping[str, Any] | Callable[[Job], Mapping[str, Any]],
    *,
    schema: str = "public",
) -> Job:
    """Change a job's args, max_attempts, meta, priority, queue, scheduled_at, tags or worker.

    ``changes`` is a mapping, or a function of the current job returning one (e.g. to add a tag).
    Raises :class:`JobNotFoundError` when no such job exists, :class:`JobLockedError` when
    another transaction holds it.
    """
    job_id = _job_id(job)
    queries = queries_for(schema)
    select = _get(schema, job_id)
    execute = sync_executor(target)
    locked = execute(queries.lock_job, {"id": job_id})
    current = _first_job(execute(select.statement, select.params))
    if current is None:
        raise JobNotFoundError(f"no job with id {job_id}")
    if not locked:
        raise JobLockedError(f"job {job_id} is locked by another transaction")
    (row,) = execute(queries.update_job, _update_params(job_id, _resolve_changes(current, changes)))
    return Job(*row)


# -- async ---------------------------------------------------------------------------------------


async def aget_job(target: Any, job_id: int, *, schema: str = "public") -> Job | None:
    """The async twin of :func:`get_job`."""
    return await _arun(target, _get(schema, job_id))


async def aall_jobs(
    target: Any, job_filter: JobFilter | None = None, *, schema: str = "public", limit: int = _DEFAULT_LIMIT
) -> list[Job]:
    """The async twin of :func:`all_jobs`."""
    return await _arun(target, _select(schema, _filter_for(job_filter), limit))


async def acancel_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """The async twin of :func:`cancel_job`."""
    return await _arun(target, _cancel(schema, _one(job))) > 0


async def acancel_all_jobs(
    target: Any, job_filter: JobFilter | None = None, *, schema: str = "public"
) -> int:
    """The async twin of :func:`cancel_all_jobs`."""
    return await _arun(target, _cancel(schema, _filter_for(job_filter)))


async def aretry_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """The async twin of :func:`retry_job`."""
    return await _arun(target, _retry(schema, _one(job))) > 0


async def aretry_all_jobs(target: Any, job_filter: JobFilter | None = None, *, schema: str = "public") -> int:
    """The async twin of :func:`retry_all_jobs`."""
    return await _arun(target, _retry(schema, _filter_for(job_filter)))


async def adelete_job(target: Any, job: Job | int, *, schema: str = "public") -> bool:
    """The async twin of :func:`delete_job`."""
    return await _arun(target, _delete(schema, _one(job))) > 0


async def adelete_all_jobs(
    target: Any, job_filter: JobFilter | None = None, *, schema: str = "public"
) -> int:
    """The async twin of :func:`delete_all_jobs`."""
    return await _arun(target, _delete(schema, _filter_for(job_filter)))


async def aupdate_job(
    target: Any,
    job: Job | int,
    changes: Mapping[str, Any] | Callable[[Job], Mapping[str, Any]],
    *,
    schema: str = "public",
) -> Job:
    """The async twin of :func:`update_job`."""
    job_id = _job_id(job)
    queries = queries_for(schema)
    select = _get(schema, job_id)
    conn = await async_connection(target)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(queries.lock_job, {"id": job_id})
        locked = await cur.fetchone()
        await cur.execute(select.statement, select.params)
        current = _first_job(await cur.fetchall())
        if current is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        if locked is None:
            raise JobLockedError(f"job {job_id} is locked by another transaction")
        await cur.execute(queries.update_job, _update_params(job_id, _resolve_changes(current, changes)))
        row = await cur.fetchone()
    assert row is not None
    return Job(*row)
