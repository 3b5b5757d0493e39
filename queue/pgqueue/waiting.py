"""Awaiting a job from any process: :func:`wait` and its async twin :func:`await_job`.

The caller LISTENs on the schema's ``result`` channel first, then reads the job; if it has not
finished, the caller marks it ``awaited`` (an UPDATE of the row, ordered by the row lock against
the ack that finishes it) and reads it again. An ack that finishes an awaited job publishes a
wake-up (one per ack statement, naming the finished ids when they fit, see ``acks.part.sql``);
acks of jobs nobody awaits publish nothing. Either the ack saw the mark and notifies a listener
that is already listening, or it finished the job before the mark and the read after it sees
that: no race is left between the check and the LISTEN. A notification is only a wake-up: the
waiter reads the row again and decides from the row alone. There is no polling loop; the only
timer is the caller's ``timeout``.

Woken, the caller sends that read and its ``UNLISTEN`` together (one pipeline, one round trip):
the wake-up nearly always means the job finished, so the caller returns as soon as the read is
back, where a read and then an ``UNLISTEN`` would cost it a second round trip to the server on
the way out. When the job had not finished after all (a wake-up that named no ids, for a batch
too large to list them), it ``LISTEN``s again and reads again, so a finish in between is seen.

A completed job gives its result (``None`` when the worker returned nothing); a discarded or
cancelled one raises :class:`~pgqueue.errors.JobFailedError` with its final error; a job that does
not exist (never inserted, or pruned) raises :class:`~pgqueue.errors.JobNotFoundError` at once;
running out of time raises :class:`~pgqueue.errors.WaitTimeoutError` (a ``TimeoutError``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

from .errors import ConfigError, JobFailedError, JobNotFoundError, ResultNotStoredError, WaitTimeoutError
from .job import Job, _waiters
from .results import marker_reason
from .store import channel_name, queries_for

__all__ = ["await_job", "wait"]

_PENDING = object()
_IDLE = psycopg.pq.TransactionStatus.IDLE


def _job_id(job: Job | int) -> int:
    job_id = job.id if isinstance(job, Job) else job
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ConfigError(f"job must be a pgqueue.Job or a positive integer id, got {job!r}")
    return job_id


def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return time.monotonic() + float(timeout)


def _settle(job_id: int, row: Sequence[Any] | None) -> Any:
    """The outcome of a job row: its result, an exception raised, or ``_PENDING``."""
    if row is None:
        raise JobNotFoundError(f"job {job_id} does not exist (never inserted, or pruned after it finished)")
    state, result, error, errors, _ = row
    if state == "completed":
        reason = marker_reason(result)
        if reason is not None:
            raise ResultNotStoredError(job_id, reason, result)
        return result
    if state in ("discarded", "cancelled"):
        raise JobFailedError(job_id, state, error, errors)
    return _PENDING


def _concerns(payload: str, job_id: int) -> bool:
    """Whether a notification on the result channel may be about ``job_id``."""
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    ids = decoded.get("ids") if isinstance(decoded, dict) else None
    return not isinstance(ids, list) or job_id in ids


def _listen(schema: str) -> tuple[sql.Composed, sql.Composed]:
    channel = sql.Identifier(channel_name(schema, "result"))
    return sql.SQL("LISTEN {}").format(channel), sql.SQL("UNLISTEN {}").format(channel)


@contextlib.contextmanager
def _sync_connection(target: str | psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(target, str):
        with psycopg.connect(target, autocommit=True) as conn:
            yield conn
        return
    if not isinstance(target, psycopg.Connection):
        raise ConfigError(f"wait needs a DSN or a psycopg Connection, got {type(target).__name__}")
    if target.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigError("wait needs a connection outside a transaction: its LISTEN applies at commit")
    autocommit = target.autocommit
    target.autocommit = True
    try:
        yield target
    finally:
        target.autocommit = autocommit


@contextlib.asynccontextmanager
async def _async_connection(
    target: str | psycopg.AsyncConnection[Any],
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    if isinstance(target, str):
        async with await psycopg.AsyncConnection.connect(target, autocommit=True) as conn:
            yield conn
        return
    if not isinstance(target, psycopg.AsyncConnection):
        raise ConfigError(f"await_job needs a DSN or a psycopg AsyncConnection, got {type(target).__name__}")
    if target.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigError("await_job needs a connection outside a transaction: its LISTEN applies at commit")
    autocommit = target.autocommit
    await target.set_autocommit(True)
    try:
        yield target
    finally:
        await target.set_autocommit(autocommit)


def wait(
    target: str | psycopg.Connection[Any],
    job: Job | int,
    timeout: float | None = None,
    *,
    schema: str = "public",
) -> Any:
    """Block until ``job`` finishes and return its result; see the module docstring for the errors.

    ``target``: a DSN (a connection is opened for the wait) or a psycopg ``Connection`` that is
    not inside a transaction. ``timeout``: seconds, or None to wait as long as it takes."""
    job_id, deadline = _job_id(job), _deadline(timeout)
    listen, unlisten = _listen(schema)
    queries = queries_for(schema)
    query = queries.job_outcome
    with _sync_connection(target) as conn:
        conn.execute(listen)
        listening = True
        try:
            while True:
                if not listening:
                    conn.execute(listen)
                    listening = True
                row = conn.execute(query, {"id": job_id}).fetchone()
                outcome = _settle(job_id, row)
                if outcome is not _PENDING:
                    return outcome
                if row is not None and not row[-1]:
                    # Marked now; whether or not the mark landed, the row is read again at once.
                    conn.execute(queries.job_await, {"id": job_id})
                    continue
                woken = False
                while not woken:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        row = conn.execute(query, {"id": job_id}).fetchone()
                        raise WaitTimeoutError(job_id, float(timeout or 0), row[0] if row else "gone")
                    wait_for = None if remaining == math.inf else remaining
                    for note in conn.notifies(timeout=wait_for, stop_after=1):
                        woken = woken or _concerns(note.payload, job_id)
                # The re-read and the UNLISTEN in one round trip (see the module docstring).
                with conn.pipeline():
                    cursor = conn.execute(query, {"id": job_id})
                    conn.execute(unlisten)
                listening = False
                outcome = _settle(job_id, cursor.fetchone())
                if outcome is not _PENDING:
                    return outcome
        finally:
            if listening and not conn.closed and conn.info.transaction_status == _IDLE:
                conn.execute(unlisten)


async def await_job(
    target: str | psycopg.AsyncConnection[Any],
    job: Job | int,
    timeout: float | None = None,
    *,
    schema: str = "public",
) -> Any:
    """The async twin of :func:`wait`: ``await pgqueue.await_job(dsn, job, timeout=5)``."""
    job_id, deadline = _job_id(job), _deadline(timeout)
    listen, unlisten = _listen(schema)
    queries = queries_for(schema)
    query = queries.job_outcome
    async with _async_connection(target) as conn:
        await conn.execute(listen)
        listening = True
        try:
            while True:
                if not listening:
                    await conn.execute(listen)
                    listening = True
                row = await (await conn.execute(query, {"id": job_id})).fetchone()
                outcome = _settle(job_id, row)
                if outcome is not _PENDING:
                    return outcome
                if row is not None and not row[-1]:
                    await conn.execute(queries.job_await, {"id": job_id})
                    continue
                woken = False
                while not woken:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        row = await (await conn.execute(query, {"id": job_id})).fetchone()
                        raise WaitTimeoutError(job_id, float(timeout or 0), row[0] if row else "gone")
                    wait_for = None if remaining == math.inf else remaining
                    async for note in conn.notifies(timeout=wait_for, stop_after=1):
                        woken = woken or _concerns(note.payload, job_id)
                # The re-read and the UNLISTEN in one round trip (see the module docstring).
                async with conn.pipeline():
                    cursor = await conn.execute(query, {"id": job_id})
                    await conn.execute(unlisten)
                listening = False
                outcome = _settle(job_id, await cursor.fetchone())
                if outcome is not _PENDING:
                    return outcome
        finally:
            if listening and not conn.closed and conn.info.transaction_status == _IDLE:
                await conn.execute(unlisten)


# `job.result(...)` and `await job.aresult(...)` wait through these
_waiters.register(wait, await_job)
