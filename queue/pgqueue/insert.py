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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import orjson
import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

from .errors import PgQueueError
from .job import Job, NewJob
from .store import channel_name, queries_for, with_columns
from .targets import async_connection, async_driver_bridge, sync_connection, sync_executor

__all__ = ["COPY_THRESHOLD", "UniqueConflictError", "ainsert", "ainsert_all", "insert", "insert_all"]

_JOB_WIDTH = 18  # the Job columns at the start of every job-returning row
_MAX_ROUNDS = 5

#: Batches of at least this many jobs, none of them unique, are written with COPY. COPY saves
#: about 10 µs of work per job but costs two more round trips: over a loopback connection it
#: wins from about 40 jobs, and at 200 it still wins where a round trip takes up to ~0.7 ms.
COPY_THRESHOLD = 200
#: COPY rows formatted per write: large enough to make few calls into psycopg, small enough that
#: the server starts ingesting while the rest of the batch is still being formatted.
_COPY_ROWS_PER_WRITE = 1000

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


def _check_jobs(jobs: Sequence[NewJob]) -> None:
    if isinstance(jobs, NewJob):
        raise TypeError("insert_all takes a list of jobs; use insert() for one job")


# -- the COPY path ------------------------------------------------------------------------------

# The state the JSON path gets back from the database for these jobs: psycopg loads the enum as str.
_AVAILABLE = "available"
_SCHEDULED = "scheduled"


def _copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format: backslash, tab, newline and CR escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_text_array(values: Sequence[str]) -> str:
    """``values`` as a text[] literal, every element quoted, then escaped for COPY."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return _copy_text("{" + ",".join(quoted) + "}")


class _CopyBatch:
    """A batch written with COPY: which columns it needs, which queues to wake, and its rows."""

    def __init__(self, jobs: Sequence[NewJob], *, scheduled: bool, meta: bool, tags: bool) -> None:
        self.jobs = jobs
        self.scheduled = scheduled
        self.meta = meta
        self.tags = tags
        # Columns at their default in every job are left out (see copy_jobs.columns.sql).
        self.columns = (
            "id",
            "args",
            "worker",
            "queue",
            "max_attempts",
            "priority",
            *(("state", "scheduled_at") if scheduled else ()),
            *(("meta",) if meta else ()),
            *(("tags",) if tags else ()),
        )
        self.results: list[Job] = []
        self.now: datetime | None = None
        self.ids: Sequence[int] = ()

    @classmethod
    def of(cls, jobs: Sequence[NewJob]) -> _CopyBatch | None:
        """The batch if COPY can write ``jobs`` and it pays off, else None (use the JSON path)."""
        if len(jobs) < COPY_THRESHOLD:
            return None
        scheduled = meta = tags = False
        for job in jobs:
            # Anything not built by new() is refused by the JSON path with a clear error.
            if not isinstance(job, NewJob) or job.unique_key is not None:
                return None
            if job.scheduled_at is not None or job.schedule_in is not None:
                scheduled = True
            if job.meta_json != "{}":
                meta = True
            if job.tags:
                tags = True
        return cls(jobs, scheduled=scheduled, meta=meta, tags=tags)

    def reserve_params(self, schema: str, notify: bool) -> dict[str, Any]:
        queues: set[str] = set()
        if notify:
            if self.scheduled:
                queues = {j.queue for j in self.jobs if j.scheduled_at is None and j.schedule_in is None}
            else:
                queues = {j.queue for j in self.jobs}
        return {"n": len(self.jobs), "channel": channel_name(schema, "insert"), "queues": sorted(queues)}

    def copy_statement(self, schema: str) -> str:
        return with_columns("copy_jobs", schema, self.columns)

    def take_reserved(self, row: Sequence[Any] | None) -> bool:
        """Take the row of reserve_job_ids.sql; False when this role can't COPY (use the JSON path).

        The row is: whether COPY is usable, the transaction's now(), the first id, and all the
        ids when they are not consecutive.
        """
        assert row is not None
        usable, self.now, first, ids = row
        if not usable:
            return False
        self.ids = range(first, first + len(self.jobs)) if ids is None else sorted(ids)
        return True

    def rows(self) -> Iterator[str]:
        """The COPY data, a block of rows at a time; builds :attr:`results` on the way.

        Each job is built here, from what the caller gave, the reserved id and now(), while the
        server is busy with the rows already sent.
        """
        now = self.now
        assert now is not None
        tz = now.tzinfo
        # Delays are added in UTC: adding to a time in a zone with daylight saving time adds to
        # its wall clock, an hour off the database's now() + interval across a change.
        now_utc = now.astimezone(UTC)
        scheduled, meta, tags = self.scheduled, self.meta, self.tags
        # Most batches repeat a few workers and queues; their escaped text is made once.
        shared: dict[tuple[str, str, int, int], str] = {}
        tag_arrays: dict[tuple[str, ...], str] = {}
        results = self.results
        pairs = zip(self.ids, self.jobs, strict=True)
        while block := list(islice(pairs, _COPY_ROWS_PER_WRITE)):
            lines: list[str] = []
            for job_id, job in block:
                (
                    worker,
                    args,
                    queue,
                    priority,
                    max_attempts,
                    job_tags,
                    job_meta,
                    at,
                    delay,
                    _,
                    _,
                    _,
                    args_json,
                    meta_json,
                ) = job
                if "\\" in args_json or "\t" in args_json or "\n" in args_json or "\r" in args_json:
                    args_json = _copy_text(args_json)
                key = (worker, queue, max_attempts, priority)
                fields = shared.get(key)
                if fields is None:
                    fields = shared[key] = (
                        f"{_copy_text(worker)}\t{_copy_text(queue)}\t{max_attempts}\t{priority}"
                    )
                state = _AVAILABLE
                scheduled_at = now
                if scheduled:
                    # A given time is stored as is, and read back in the session's time zone (as
                    # ``now`` is): the job carries it converted so, like one read back would.
                    if at is not None:
                        state, scheduled_at = _SCHEDULED, at.astimezone(tz)
                    elif delay is not None:
                        state, scheduled_at = _SCHEDULED, (now_utc + timedelta(seconds=delay)).astimezone(tz)
                    fields += f"\t{state}\t{scheduled_at.isoformat()}"
                if meta:
                    fields += "\t" + _copy_text(meta_json)
                if tags:
                    array = tag_arrays.get(job_tags)
                    if array is None:
                        array = tag_arrays[job_tags] = _copy_text_array(job_tags)
                    fields += "\t" + array
                lines.append(f"{job_id}\t{args_json}\t{fields}\n")
                results.append(
                    Job(
                        job_id,
                        state,
                        queue,
                        worker,
                        args,
                        job_meta,
                        list(job_tags),
                        [],
                        0,
                        max_attempts,
                        priority,
                        now,
                        scheduled_at,
                        None,
                        None,
                        None,
                        None,
                        None,
                    )
                )
            yield "".join(lines)


def _needs_own_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    # In autocommit mode each statement would commit on its own: the notifications before the
    # rows exist, and the COPY's now() no longer the one the jobs were built with.
    return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE


def _copy_insert(
    conn: psycopg.Connection[Any], batch: _CopyBatch, schema: str, notify: bool
) -> list[Job] | None:
    """Write ``batch`` with COPY; None (nothing written) when this role can't, see take_reserved."""
    with conn.transaction() if _needs_own_transaction(conn) else nullcontext():
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(queries_for(schema).reserve_job_ids, batch.reserve_params(schema, notify))
            if not batch.take_reserved(cur.fetchone()):
                return None
            with cur.copy(batch.copy_statement(schema)) as copy:
                for block in batch.rows():
                    copy.write(block)
    return batch.results


async def _acopy_insert(
    conn: psycopg.AsyncConnection[Any], batch: _CopyBatch, schema: str, notify: bool
) -> list[Job] | None:
    """The async twin of :func:`_copy_insert`."""
    async with conn.transaction() if _needs_own_transaction(conn) else nullcontext():
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(queries_for(schema).reserve_job_ids, batch.reserve_params(schema, notify))
            if not batch.take_reserved(await cur.fetchone()):
                return None
            async with cur.copy(batch.copy_statement(schema)) as copy:
                for block in batch.rows():
                    await copy.write(block)
    return batch.results


def _sync_copy_insert(target: Any, batch: _CopyBatch, schema: str, notify: bool) -> list[Job] | None:
    bridge = async_driver_bridge(target)
    if bridge is not None:
        # A Session handed out by AsyncSession.run_sync: COPY through its async driver connection.
        return bridge.run_async(lambda conn: _acopy_insert(conn, batch, schema, notify))
    return _copy_insert(sync_connection(target), batch, schema, notify)


def insert_all(
    target: Any, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """Insert ``jobs`` in the transaction of ``target`` and return them saved, in order.

    ``target`` is a psycopg ``Connection`` or ``Cursor``, or a SQLAlchemy ``Session`` or
    ``Connection`` on the psycopg driver. Unique jobs that collide come back as the existing job
    with ``conflict=True``.

    A batch smaller than :data:`COPY_THRESHOLD`, or with any unique job, is one statement (one
    round trip) however many jobs. A larger batch without unique jobs is two statements: one
    reserving the ids and waking the queues, then a ``COPY`` of the rows, two to five times as
    fast as the one statement would be (the larger the batch, the more). Either way the jobs
    returned are exactly the rows written, and nothing is visible (or notified) until the caller
    commits. In autocommit mode the two run in a transaction of their own, so the batch still
    lands whole or not at all.
    """
    _check_jobs(jobs)
    runner = inline_runner.get()
    if runner is not None:
        return runner(jobs)
    if not jobs:
        return []
    batch = _CopyBatch.of(jobs)
    if batch is not None:
        saved = _sync_copy_insert(target, batch, schema, notify)
        if saved is not None:
            return saved
    execute = sync_executor(target)
    queries = queries_for(schema)
    plan = _Plan(jobs)
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


def _single_params(job: NewJob, schema: str, notify: bool) -> dict[str, Any] | None:
    """The parameters of ``queries/insert_job.sql`` for ``job``, or None when it needs the batch
    statement (a unique job, or inline mode)."""
    if not isinstance(job, NewJob) or job.unique_key is not None:
        return None
    if inline_runner.get() is not None or ainline_runner.get() is not None:
        return None
    return {
        "worker": job.worker,
        "queue": job.queue,
        "args": job.args_json,
        "meta": job.meta_json,
        "tags": list(job.tags),
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "scheduled_at": job.scheduled_at,
        "schedule_in": job.schedule_in,
        "channel": channel_name(schema, "insert"),
        "notify": notify,
    }


def insert(target: Any, job: NewJob, *, schema: str = "public", notify: bool = True) -> Job:
    """Insert one job in the transaction of ``target``; see :func:`insert_all`.

    A job that isn't unique takes a plain ``INSERT`` (``queries/insert_job.sql``), a quarter
    cheaper than the batch statement.
    """
    params = _single_params(job, schema, notify)
    if params is None:
        return insert_all(target, [job], schema=schema, notify=notify)[0]
    rows = sync_executor(target)(queries_for(schema).insert_job, params)
    return _saved(job, rows[0])


async def ainsert_all(
    target: Any, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """The async twin of :func:`insert_all`: a psycopg ``AsyncConnection``/``AsyncCursor`` or a
    SQLAlchemy ``AsyncSession``/``AsyncConnection`` on the psycopg driver."""
    _check_jobs(jobs)
    arunner = ainline_runner.get()
    if arunner is not None:
        return await arunner(jobs)
    if not jobs:
        return []
    conn = await async_connection(target)
    batch = _CopyBatch.of(jobs)
    if batch is not None:
        saved = await _acopy_insert(conn, batch, schema, notify)
        if saved is not None:
            return saved
    queries = queries_for(schema)
    plan = _Plan(jobs)
    async with conn.cursor(row_factory=tuple_row) as cur:
        for _ in range(_MAX_ROUNDS):
            if not plan.pending:
                break
            await cur.execute(queries.insert_jobs, plan.insert_params(schema, notify))
            plan.take_inserted(await cur.fetchall())
            if not plan.pending:
                break
            await cur.execute(queries.find_unique_holders, {"unique_keys": plan.pending_keys()})
            expired, live = plan.resolve_conflicts(await cur.fetchall())
            if expired:
                await cur.execute(queries.release_unique_keys, {"ids": expired})
            for index, holder in live:
                job = plan.jobs[index]
                params = _replace_params(job, holder)
                if params is not None:
                    await cur.execute(queries.replace_job, params)
                    holder = await cur.fetchone() or holder
                plan.results[index] = _job(holder, conflict=True)
    return plan.finish()


async def ainsert(target: Any, job: NewJob, *, schema: str = "public", notify: bool = True) -> Job:
    """Insert one job; the async twin of :func:`insert`."""
    params = _single_params(job, schema, notify)
    if params is None:
        return (await ainsert_all(target, [job], schema=schema, notify=notify))[0]
    conn = await async_connection(target)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(queries_for(schema).insert_job, params)
        row = await cur.fetchone()
    assert row is not None
    return _saved(job, row)
