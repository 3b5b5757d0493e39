"""Bulk insert by ``COPY``: how ``insert_all`` writes a large batch with no unique job.

One statement reserves the batch's ids from the identity sequence, returns the transaction's
``now()`` and wakes the queues (``queries/reserve_job_ids.sql``); then ``COPY … FROM STDIN``
streams the rows (``queries/copy_jobs.columns.sql``), formatted here a block at a time while the
server ingests the previous block. Every value of the returned jobs is known before the rows are
written, so nothing is read back. See :mod:`pgqueue.insert` for when this path is taken. The
rows go through the caller's driver (:mod:`pgqueue.drivers`): psycopg's ``copy``, psycopg2's
``copy_expert`` or asyncpg's ``copy_to_table``, the same text on each.

Python's cyclic garbage collector is paused while a batch is written. Every job returned is a
tuple holding two fresh lists, three objects the collector tracks, and a batch keeps them all
alive: a collection every 700 of them, each older generation walked again and again as the batch
grows, was two thirds of the client's CPU for a batch of 100,000 (0.33 s, 0.12 s paused). Nothing
written here makes a reference cycle; anything another thread makes in the meantime is collected
once the batch is written, and the collector is left as it was found.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from .drivers import AsyncWriter, SyncWriter
from .job import Job, NewJob
from .store import channel_name, queries_for, with_columns

__all__ = ["COPY_THRESHOLD", "CopyBatch", "acopy_insert", "copy_insert"]

#: Batches of at least this many jobs, none of them unique, are written with COPY. COPY saves
#: about 10 µs of work per job but costs two more round trips: over a loopback connection it
#: wins from about 40 jobs, and at 200 it still wins where a round trip takes up to ~0.7 ms.
COPY_THRESHOLD = 200
#: COPY rows formatted per write: large enough to make few calls into psycopg, small enough that
#: the server starts ingesting while the rest of the batch is still being formatted.
_COPY_ROWS_PER_WRITE = 1000

# The state the JSON path gets back from the database for these jobs: psycopg loads the enum as str.
_AVAILABLE = "available"
_SCHEDULED = "scheduled"
# A new job's last fields: never attempted (attempted_at, attempted_by), never finished
# (completed_at, cancelled_at, discarded_at), and not a unique conflict. Jobs are built with
# tuple.__new__, which takes every field (Job's own __new__ fills in defaults, at twice the cost).
_NEW_JOB_TAIL = (None, None, None, None, None, False)
_new_tuple = tuple.__new__


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (see the module docstring)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format: backslash, tab, newline and CR escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_text_array(values: Sequence[str]) -> str:
    """``values`` as a text[] literal, every element quoted, then escaped for COPY."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return _copy_text("{" + ",".join(quoted) + "}")


class CopyBatch:
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
    def of(cls, jobs: Sequence[NewJob]) -> CopyBatch | None:
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
        if not (self.scheduled or self.meta or self.tags):
            yield from self._plain_rows(now)
            return
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
                    _new_tuple(
                        Job,
                        (
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
                            False,
                        ),
                    )
                )
            yield "".join(lines)

    def _plain_rows(self, now: datetime) -> Iterator[str]:
        """:meth:`rows` for the common batch: every job available now, with no meta and no tags.

        Only the id, args and the few fields shared by many jobs vary, so a block is built by two
        comprehensions; its args are checked for characters COPY must escape once, as one string.
        """
        shared: dict[tuple[str, str, int, int], str] = {}
        results = self.results
        ids = iter(self.ids)
        jobs = iter(self.jobs)
        new = _new_tuple
        while block := list(islice(jobs, _COPY_ROWS_PER_WRITE)):
            block_ids = list(islice(ids, len(block)))
            if len(block_ids) != len(block):
                raise ValueError("fewer ids reserved than jobs to write")
            fields: list[str] = []
            for job in block:
                key = (job.worker, job.queue, job.max_attempts, job.priority)
                text = shared.get(key)
                if text is None:
                    text = shared[key] = (
                        f"{_copy_text(job.worker)}\t{_copy_text(job.queue)}\t{job.max_attempts}\t{job.priority}"
                    )
                fields.append(text)
            args = [job.args_json for job in block]
            joined = "".join(args)
            if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
                args = [_copy_text(a) for a in args]
            yield "".join([f"{i}\t{a}\t{f}\n" for i, a, f in zip(block_ids, args, fields, strict=True)])
            results.extend(
                [
                    new(
                        Job,
                        (
                            i,
                            _AVAILABLE,
                            j.queue,
                            j.worker,
                            j.args,
                            j.meta,
                            list(j.tags),
                            [],
                            0,
                            j.max_attempts,
                            j.priority,
                            now,
                            now,
                            *_NEW_JOB_TAIL,
                        ),
                    )
                    for i, j in zip(block_ids, block, strict=True)
                ]
            )


def copy_insert(writer: SyncWriter, batch: CopyBatch, schema: str, notify: bool) -> list[Job] | None:
    """Write ``batch`` with COPY; None (nothing written) when this role can't, see take_reserved."""
    reserved = writer.execute(queries_for(schema).reserve_job_ids, batch.reserve_params(schema, notify))
    if not batch.take_reserved(reserved[0] if reserved else None):
        return None
    with _collector_paused():
        writer.copy(batch.copy_statement(schema), batch.rows())
    return batch.results


async def acopy_insert(writer: AsyncWriter, batch: CopyBatch, schema: str, notify: bool) -> list[Job] | None:
    """The async twin of :func:`copy_insert`."""
    reserved = await writer.execute(queries_for(schema).reserve_job_ids, batch.reserve_params(schema, notify))
    if not batch.take_reserved(reserved[0] if reserved else None):
        return None
    with _collector_paused():
        await writer.copy(batch.copy_statement(schema), batch.rows())
    return batch.results
