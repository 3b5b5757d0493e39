"""Insert jobs into the caller's transaction: ``insert``/``insert_all`` and their async twins.

The job rows are written on the caller's own connection, inside whatever transaction it has
open: roll it back and no job exists; commit it and the jobs become visible and their queues
are woken (``pg_notify`` sent in the same transaction, delivered at commit).

``insert_all`` writes a batch one of two ways:

* **One statement** (``queries/insert_jobs.sql``): the whole batch as one JSON document, one
  round trip for any number of jobs. Unique jobs are enforced by the database's unique index;
  when some collide, a second round trip reads the jobs that hold their keys, applies
  ``replace`` and the uniqueness period, and returns the existing jobs with ``conflict=True``.
* **COPY**, for batches of at least :data:`COPY_THRESHOLD` jobs none of which is unique: one
  statement reserves the batch's ids from the identity sequence, returns the transaction's
  ``now()`` and wakes the queues (``queries/reserve_job_ids.sql``), then ``COPY … FROM STDIN``
  streams the rows. The server ingests COPY rows several times faster than it unpacks and
  inserts JSON records, and the client formats each block of rows while the server ingests the
  previous one: 1,000 jobs go twice as fast, 100,000 five times. Every value of the returned
  jobs is known before the rows are written (the ids reserved, the timestamps computed from that
  ``now()``), so nothing is read back. Columns every job leaves at the table's default are left
  out of the COPY, which spares the server parsing them. Unique jobs need ``ON CONFLICT``, which
  COPY lacks, hence the JSON path for them; small batches take it too, where its one round trip
  beats COPY's three (the reserving statement, then COPY's start and end).

A role may be allowed to insert jobs and still not to COPY them: the reserving statement checks
and, when it can't, reserves and wakes nothing, and the batch takes the JSON path.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from . import middleware
from .bulk_copy import COPY_THRESHOLD, CopyBatch, acopy_insert, copy_insert
from .drivers import AsyncWriter, SyncWriter
from .errors import PgQueueError
from .job import Job, NewJob
from .store import channel_name, queries_for
from .targets import async_writer, sync_writer

__all__ = ["COPY_THRESHOLD", "UniqueConflictError", "ainsert", "ainsert_all", "insert", "insert_all"]

_JOB_WIDTH = 18  # the Job columns at the start of every job-returning row
_MAX_ROUNDS = 5

#: When set (by ``pgqueue.testing.inline()``), inserts run jobs at once instead of writing them.
inline_runner: ContextVar[Callable[[Sequence[NewJob]], list[Job]] | None] = ContextVar(
    "pgqueue_inline_runner", default=None
)
ainline_runner: ContextVar[Callable[[Sequence[NewJob]], Awaitable[list[Job]]] | None] = ContextVar(
    "pgqueue_ainline_runner", default=None
)


class UniqueConflictError(PgQueueError):
    """A unique job kept colliding with a job this transaction can't see (e.g. under REPEATABLE READ)."""


def _job(row: Sequence[Any], *, conflict: bool = False) -> Job:
    job = Job(*row[:_JOB_WIDTH])
    return job._replace(conflict=True) if conflict else job


@dataclass
class _Plan:
    """One insert: the jobs, which of them are still unresolved, and the results so far."""

    jobs: Sequence[NewJob]
    results: list[Job | None] = field(init=False)
    #: indices to send in the next INSERT round
    pending: list[int] = field(init=False)
    #: later jobs in the batch with the same unique key as an earlier one: index → first index
    duplicates: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.jobs)
        first_with_key: dict[bytes, int] = {}
        self.pending = []
        for index, job in enumerate(self.jobs):
            if not isinstance(job, NewJob):
                raise TypeError(
                    f"jobs must be built with Worker.new(...), got {type(job).__name__} at {index}"
                )
            if job.unique_key is not None:
                earlier = first_with_key.setdefault(job.unique_key, index)
                if earlier != index:
                    self.duplicates[index] = earlier
                    continue
            self.pending.append(index)

    def insert_params(self, schema: str, notify: bool) -> dict[str, Any]:
        # One JSON document for the whole batch, encoded in C; args and meta are already JSON and
        # are spliced in as they are.
        rows = [
            {
                "o": order,
                "w": job.worker,
                "q": job.queue,
                "a": orjson.Fragment(job.args_json),
                "m": orjson.Fragment(job.meta_json),
                "t": job.tags or None,
                "x": job.max_attempts,
                "p": job.priority,
                "s": job.scheduled_at,
                "d": job.schedule_in,
                "k": job.unique_key.hex() if job.unique_key is not None else None,
                "u": [state.value for state in job.unique.states] if job.unique is not None else None,
            }
            for order, job in enumerate(self.jobs[i] for i in self.pending)
        ]
        return {
            "rows": orjson.dumps(rows).decode(),
            "channel": channel_name(schema, "insert"),
            "notify": notify,
        }

    def take_inserted(self, rows: Sequence[Sequence[Any]]) -> None:
        """Match inserted rows back to their jobs; unique jobs that were skipped stay pending.

        A row is (id, state, inserted_at, scheduled_at, unique_key): the job is built from it and
        from what the caller gave, which the database stored unchanged (checked by ``new()``).
        """
        by_key: dict[bytes, Sequence[Any]] = {}
        plain: list[Sequence[Any]] = []
        for row in rows:
            key = row[4]
            if key is None:
                plain.append(row)
            else:
                by_key[bytes(key)] = row
        # Rows were inserted in input order, so their ids ascend in it.
        plain.sort(key=lambda row: int(row[0]))
        plain_iter = iter(plain)
        still_pending: list[int] = []
        for index in self.pending:
            job = self.jobs[index]
            key = job.unique_key
            if key is None:
                self.results[index] = _saved(job, next(plain_iter))
            elif key in by_key:
                self.results[index] = _saved(job, by_key[key])
            else:
                still_pending.append(index)
        self.pending = still_pending

    def pending_keys(self) -> list[bytes]:
        return [k for k in (self.jobs[i].unique_key for i in self.pending) if k is not None]

    def resolve_conflicts(
        self, holders: Sequence[Sequence[Any]]
    ) -> tuple[list[int], list[tuple[int, Sequence[Any]]]]:
        """Split pending jobs by their key's holder: expired holders to release, live ones to return."""
        holder_by_key = {bytes(row[_JOB_WIDTH]): row for row in holders}
        expired: list[int] = []
        live: list[tuple[int, Sequence[Any]]] = []
        retry: list[int] = []
        for index in self.pending:
            job = self.jobs[index]
            assert job.unique_key is not None
            assert job.unique is not None
            holder = holder_by_key.get(job.unique_key)
            if holder is None:
                retry.append(index)  # the holder changed state or vanished meanwhile: insert again
                continue
            period = job.unique.period
            stamp: datetime = holder[11] if job.unique.timestamp == "inserted_at" else holder[12]
            db_now: datetime = holder[_JOB_WIDTH + 1]
            if period is not None and stamp < db_now - timedelta(seconds=period):
                expired.append(int(holder[0]))
                retry.append(index)
            else:
                live.append((index, holder))
        self.pending = retry
        return expired, live

    def finish(self) -> list[Job]:
        if self.pending:
            raise UniqueConflictError(
                "a unique job kept colliding with a job this transaction can't see; "
                "retry the transaction (under READ COMMITTED this does not happen)"
            )
        for index, earlier in self.duplicates.items():
            original = self.results[earlier]
            assert original is not None
            self.results[index] = original._replace(conflict=True)
        return [job for job in self.results if job is not None]


def _saved(new: NewJob, row: Sequence[Any]) -> Job:
    job_id, state, inserted_at, scheduled_at = row[0], row[1], row[2], row[3]
    return Job(
        job_id,
        state,
        new.queue,
        new.worker,
        new.args,
        new.meta,
        list(new.tags),
        [],
        0,
        new.max_attempts,
        new.priority,
        inserted_at,
        scheduled_at,
        None,
        None,
        None,
        None,
        None,
    )


def _replace_params(job: NewJob, holder: Sequence[Any]) -> dict[str, Any] | None:
    fields = job.replace.get(str(holder[1]), ())
    if not fields:
        return None
    params: dict[str, Any] = {
        f"set_{name}": name in fields
        for name in ("args", "max_attempts", "meta", "priority", "queue", "scheduled_at", "tags", "worker")
    }
    params.update(
        id=holder[0],
        args=job.args_json,
        max_attempts=job.max_attempts,
        meta=job.meta_json,
        priority=job.priority,
        queue=job.queue,
        scheduled_at=job.scheduled_at,
        schedule_in=job.schedule_in,
        tags=json.dumps(job.tags),
        worker=job.worker,
    )
    return params


#: wraps every insert of a batch (tracing opens a span around it and carries its context in each
#: job's meta); None, the default, costs the insert nothing
InsertWrapper = Callable[[Sequence[NewJob]], AbstractContextManager[Sequence[NewJob]]]
_insert_wrapper: InsertWrapper | None = None


def set_insert_wrapper(wrapper: InsertWrapper | None) -> InsertWrapper | None:
    """Install ``wrapper`` around every insert (None removes it); returns the one it replaces."""
    global _insert_wrapper
    previous, _insert_wrapper = _insert_wrapper, wrapper
    return previous


def _check_jobs(jobs: Sequence[NewJob]) -> None:
    if isinstance(jobs, NewJob):
        raise TypeError("insert_all takes a list of jobs; use insert() for one job")


def insert_all(
    target: Any, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """Insert ``jobs`` in the transaction of ``target`` and return them saved, in order.

    ``target`` is a psycopg ``Connection`` or ``Cursor``, a psycopg2 ``connection`` or ``cursor``,
    or a SQLAlchemy ``Session``, ``Connection`` or ``Engine`` on psycopg or psycopg2 (see
    :mod:`pgqueue.targets`; an ``Engine`` gets a transaction of its own). Unique jobs that collide
    come back as the existing job with ``conflict=True``.

    A batch smaller than :data:`COPY_THRESHOLD`, or with any unique job, is one statement (one
    round trip) however many jobs. A larger batch without unique jobs is two statements: one
    reserving the ids and waking the queues, then a ``COPY`` of the rows, two to five times as
    fast as the one statement would be (the larger the batch, the more). Either way the jobs
    returned are exactly the rows written, and nothing is visible (or notified) until the caller
    commits. In autocommit mode the two run in a transaction of their own, so the batch still
    lands whole or not at all.
    """
    _check_jobs(jobs)
    if middleware.installed():
        return middleware.run_insert(jobs, lambda given: _insert_all(target, given, schema, notify))
    return _insert_all(target, jobs, schema, notify)


def _insert_all(target: Any, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    _check_jobs(jobs)
    runner = inline_runner.get()
    if runner is not None:
        return runner(jobs)
    if not jobs:
        return []
    wrapper = _insert_wrapper
    if wrapper is not None:
        with wrapper(jobs) as wrapped:
            return _write_all(target, wrapped, schema, notify)
    return _write_all(target, jobs, schema, notify)


def _write_all(target: Any, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    with sync_writer(target) as writer:
        return write_jobs(writer, jobs, schema, notify)


def write_jobs(writer: SyncWriter, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    """Write ``jobs`` through ``writer`` (COPY or one statement); for callers holding a writer."""
    batch = CopyBatch.of(jobs)
    if batch is not None:
        saved = copy_insert(writer, batch, schema, notify)
        if saved is not None:
            return saved
    return _insert_rounds(writer, _Plan(jobs), schema, notify)


def _insert_rounds(writer: SyncWriter, plan: _Plan, schema: str, notify: bool) -> list[Job]:
    """The JSON path: insert, then settle the unique jobs that collided, in a few rounds."""
    execute = writer.execute
    queries = queries_for(schema)
    for _ in range(_MAX_ROUNDS):
        if not plan.pending:
            break
        plan.take_inserted(execute(queries.insert_jobs, plan.insert_params(schema, notify)))
        if not plan.pending:
            break
        holders = execute(queries.find_unique_holders, {"unique_keys": plan.pending_keys()})
        expired, live = plan.resolve_conflicts(holders)
        if expired:
            execute(queries.release_unique_keys, {"ids": expired})
        for index, holder in live:
            params = _replace_params(plan.jobs[index], holder)
            if params is not None:
                holder = execute(queries.replace_job, params)[0]
            plan.results[index] = _job(holder, conflict=True)
    return plan.finish()


def insert(target: Any, job: NewJob, *, schema: str = "public", notify: bool = True) -> Job:
    """Insert one job in the transaction of ``target``; see :func:`insert_all`."""
    return insert_all(target, [job], schema=schema, notify=notify)[0]


async def ainsert_all(
    target: Any, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """The async twin of :func:`insert_all`: a psycopg ``AsyncConnection``/``AsyncCursor``, an
    asyncpg ``Connection`` or ``Pool``, or a SQLAlchemy ``AsyncSession``/``AsyncConnection``/
    ``AsyncEngine`` on psycopg or asyncpg (a pool or an engine gets a transaction of its own)."""
    _check_jobs(jobs)
    if middleware.installed():
        return await middleware.run_ainsert(jobs, lambda given: _ainsert_all(target, given, schema, notify))
    return await _ainsert_all(target, jobs, schema, notify)


async def _ainsert_all(target: Any, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    _check_jobs(jobs)
    arunner = ainline_runner.get()
    if arunner is not None:
        return await arunner(jobs)
    if not jobs:
        return []
    wrapper = _insert_wrapper
    if wrapper is not None:
        with wrapper(jobs) as wrapped:
            return await _awrite_all(target, wrapped, schema, notify)
    return await _awrite_all(target, jobs, schema, notify)


async def _awrite_all(target: Any, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    async with async_writer(target) as writer:
        return await awrite_jobs(writer, jobs, schema, notify)


async def awrite_jobs(writer: AsyncWriter, jobs: Sequence[NewJob], schema: str, notify: bool) -> list[Job]:
    """The async twin of :func:`write_jobs`."""
    batch = CopyBatch.of(jobs)
    if batch is not None:
        saved = await acopy_insert(writer, batch, schema, notify)
        if saved is not None:
            return saved
    return await _ainsert_rounds(writer, _Plan(jobs), schema, notify)


async def _ainsert_rounds(writer: AsyncWriter, plan: _Plan, schema: str, notify: bool) -> list[Job]:
    """The async twin of :func:`_insert_rounds`."""
    execute = writer.execute
    queries = queries_for(schema)
    for _ in range(_MAX_ROUNDS):
        if not plan.pending:
            break
        plan.take_inserted(await execute(queries.insert_jobs, plan.insert_params(schema, notify)))
        if not plan.pending:
            break
        holders = await execute(queries.find_unique_holders, {"unique_keys": plan.pending_keys()})
        expired, live = plan.resolve_conflicts(holders)
        if expired:
            await execute(queries.release_unique_keys, {"ids": expired})
        for index, holder in live:
            params = _replace_params(plan.jobs[index], holder)
            if params is not None:
                holder = (await execute(queries.replace_job, params))[0]
            plan.results[index] = _job(holder, conflict=True)
    return plan.finish()


async def ainsert(target: Any, job: NewJob, *, schema: str = "public", notify: bool = True) -> Job:
    """Insert one job; the async twin of :func:`insert`."""
    return (await ainsert_all(target, [job], schema=schema, notify=notify))[0]
