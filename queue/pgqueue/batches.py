"""Batches: a group of jobs with callback jobs inserted when the group completes or fails.

::

    batch = pgqueue.insert_batch(conn, [Resize.new({"id": i}) for i in ids],
                                 on_completed=Notify.new({"msg": "all resized"}),
                                 on_discarded=Alert.new({}), on_finished=Cleanup.new({}))
    pgqueue.add_to_batch(conn, batch.id, [Resize.new({"id": 99})])   # until it has finished
    pgqueue.batch_progress(conn, batch.id)  # BatchProgress(total=…, completed=…, …)

Each callback is a job inserted *exactly once*, by the ack statement that makes its condition true
(see ``batch_acks.part.sql``): ``on_completed`` when every member completed, ``on_discarded`` when
the first member is discarded, ``on_finished`` when every member is completed, discarded or
cancelled. A callback's ``meta["batch"]`` holds ``{"id": batch_id, "event": "completed" | …}``.
Members and the batch row are written in the caller's transaction, like :func:`pgqueue.insert_all`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from .drivers import AsyncWriter, SyncWriter
from .errors import BatchClosedError, ConfigError, PgQueueError
from .insert import awrite_jobs, write_jobs
from .job import Job, NewJob
from .store import queries_for
from .targets import async_writer, sync_writer

__all__ = [
    "Batch",
    "BatchNotFoundError",
    "BatchProgress",
    "aadd_to_batch",
    "abatch_progress",
    "add_to_batch",
    "ainsert_batch",
    "batch_progress",
    "insert_batch",
]


class BatchNotFoundError(PgQueueError, LookupError):
    """No batch has the given id (never created, or pruned after it finished)."""


class Batch(NamedTuple):
    """A batch just inserted: its id and its member jobs, saved, in order."""

    id: int
    jobs: list[Job]


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """How far a batch has got, as counted by the acks of its members."""

    id: int
    total: int
    completed: int
    discarded: int
    cancelled: int
    meta: dict[str, Any]
    inserted_at: datetime
    finished_at: datetime | None

    @property
    def pending(self) -> int:
        """Members not yet in a final state."""
        return self.total - self.completed - self.discarded - self.cancelled

    @property
    def finished(self) -> bool:
        """True once every member is completed, discarded or cancelled."""
        return self.finished_at is not None


def _callback(name: str, job: NewJob | None) -> str | None:
    if job is None:
        return None
    if not isinstance(job, NewJob):
        raise ConfigError(f"{name} must be an unsaved job from Worker.new(...), got {type(job).__name__}")
    if job.scheduled_at is not None or job.schedule_in is not None or job.unique is not None:
        raise ConfigError(f"{name} can't be scheduled or unique: it is inserted when the batch gets there")
    spec = {
        "worker": job.worker,
        "queue": job.queue,
        "args": orjson.Fragment(job.args_json),
        "meta": orjson.Fragment(job.meta_json),
        "tags": list(job.tags),
        "priority": job.priority,
        "max_attempts": job.max_attempts,
    }
    return orjson.dumps(spec).decode()


def _members(jobs: Sequence[NewJob]) -> list[NewJob]:
    if isinstance(jobs, NewJob):
        raise ConfigError("jobs must be a list of jobs, got one job")
    members = list(jobs)
    if not members:
        raise ConfigError("a batch needs at least one job, got none")
    for index, job in enumerate(members):
        if not isinstance(job, NewJob):
            raise ConfigError(
                f"jobs[{index}] must be an unsaved job from Worker.new(...), got {type(job).__name__}"
            )
    return members


def _create_params(
    on_completed: NewJob | None, on_discarded: NewJob | None, on_finished: NewJob | None, meta: Any
) -> dict[str, Any]:
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        meta_json = orjson.dumps(meta or {}).decode()
    except TypeError as exc:
        raise ConfigError(f"meta must be JSON-serialisable: {exc}") from None
    return {
        "on_completed": _callback("on_completed", on_completed),
        "on_discarded": _callback("on_discarded", on_discarded),
        "on_finished": _callback("on_finished", on_finished),
        "meta": meta_json,
    }


def _progress(batch_id: int, rows: list[tuple[Any, ...]]) -> BatchProgress:
    if not rows:
        raise BatchNotFoundError(f"batch {batch_id} does not exist (never created, or pruned)")
    return BatchProgress(*rows[0])


def _closed(batch_id: int, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        raise BatchNotFoundError(f"batch {batch_id} does not exist (never created, or pruned)")
    if rows[0][0]:
        raise BatchClosedError(
            f"batch {batch_id} has finished; its callbacks have fired, so it takes no more jobs"
        )


def _check_id(batch_id: int) -> int:
    if isinstance(batch_id, bool) or not isinstance(batch_id, int) or batch_id < 1:
        raise ConfigError(f"batch_id must be a positive integer, got {batch_id!r}")
    return batch_id


def _add(writer: SyncWriter, batch_id: int, jobs: list[NewJob], schema: str, notify: bool) -> list[Job]:
    saved = write_jobs(writer, jobs, schema, notify)
    ids = [job.id for job in saved if not job.conflict]
    writer.execute(queries_for(schema).batch_add, {"id": batch_id, "ids": ids})
    return saved


async def _aadd(
    writer: AsyncWriter, batch_id: int, jobs: list[NewJob], schema: str, notify: bool
) -> list[Job]:
    saved = await awrite_jobs(writer, jobs, schema, notify)
    ids = [job.id for job in saved if not job.conflict]
    await writer.execute(queries_for(schema).batch_add, {"id": batch_id, "ids": ids})
    return saved


def insert_batch(
    target: Any,
    jobs: Sequence[NewJob],
    *,
    on_completed: NewJob | None = None,
    on_discarded: NewJob | None = None,
    on_finished: NewJob | None = None,
    meta: dict[str, Any] | None = None,
    schema: str = "public",
    notify: bool = True,
) -> Batch:
    """Insert ``jobs`` as a new batch in the transaction of ``target`` (what :func:`pgqueue.insert_all`
    takes); the callbacks are unsaved jobs, inserted later by the acks of the members."""
    members = _members(jobs)
    params = _create_params(on_completed, on_discarded, on_finished, meta)
    with sync_writer(target) as writer:
        batch_id = int(writer.execute(queries_for(schema).batch_create, params)[0][0])
        return Batch(batch_id, _add(writer, batch_id, members, schema, notify))


async def ainsert_batch(
    target: Any,
    jobs: Sequence[NewJob],
    *,
    on_completed: NewJob | None = None,
    on_discarded: NewJob | None = None,
    on_finished: NewJob | None = None,
    meta: dict[str, Any] | None = None,
    schema: str = "public",
    notify: bool = True,
) -> Batch:
    """The async twin of :func:`insert_batch`."""
    members = _members(jobs)
    params = _create_params(on_completed, on_discarded, on_finished, meta)
    async with async_writer(target) as writer:
        batch_id = int((await writer.execute(queries_for(schema).batch_create, params))[0][0])
        return Batch(batch_id, await _aadd(writer, batch_id, members, schema, notify))


def add_to_batch(
    target: Any, batch_id: int, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """Add ``jobs`` to a batch that has not finished; raises :class:`BatchClosedError` if it has."""
    batch_id, members = _check_id(batch_id), _members(jobs)
    with sync_writer(target) as writer:
        _closed(batch_id, writer.execute(queries_for(schema).batch_lock, {"id": batch_id}))
        return _add(writer, batch_id, members, schema, notify)


async def aadd_to_batch(
    target: Any, batch_id: int, jobs: Sequence[NewJob], *, schema: str = "public", notify: bool = True
) -> list[Job]:
    """The async twin of :func:`add_to_batch`."""
    batch_id, members = _check_id(batch_id), _members(jobs)
    async with async_writer(target) as writer:
        _closed(batch_id, await writer.execute(queries_for(schema).batch_lock, {"id": batch_id}))
        return await _aadd(writer, batch_id, members, schema, notify)


def batch_progress(target: Any, batch_id: int, *, schema: str = "public") -> BatchProgress:
    """The counts of a batch: total, completed, discarded, cancelled (and ``pending``)."""
    batch_id = _check_id(batch_id)
    with sync_writer(target) as writer:
        return _progress(batch_id, writer.execute(queries_for(schema).batch_get, {"id": batch_id}))


async def abatch_progress(target: Any, batch_id: int, *, schema: str = "public") -> BatchProgress:
    """The async twin of :func:`batch_progress`."""
    batch_id = _check_id(batch_id)
    async with async_writer(target) as writer:
        return _progress(batch_id, await writer.execute(queries_for(schema).batch_get, {"id": batch_id}))
