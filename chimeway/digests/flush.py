"""The flush: when a digest window ends, emit each bucket once as ONE digest delivery.

Every bucket gets a flush job (:class:`DigestFlushWorker`, args: only ``bucket_id``) scheduled at
its window's end, inserted in the same transaction as the bucket: no poller scans buckets. The
first flush job of a window to run flushes every bucket of that window (same rule, same end)
set-wise, a chunk of :data:`CHUNK` buckets per transaction; the window's other jobs then find
their bucket emitted and end at once.

Per chunk, in one transaction: lock the chunk's pending buckets (``digest_flush_lock.sql``), emit
a digest delivery per bucket and mark its members ``digested`` (``digest_flush_emit.sql``), insert
the digest deliveries' dispatch jobs, commit. So a bucket is emitted once:

* two flushers of the same window wait on each other's locks; the one that comes second finds
  those buckets emitted and moves on;
* a worker killed mid-flush rolls its chunk back (nothing half-emitted); its job is rescued by
  pgqueue's lifeline and the next run emits what is still pending.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

import pgqueue

from ..dispatch import current_dispatcher, dispatch_job
from ..planning import time_ordered_ids
from ..store import queries_for

__all__ = [
    "CHUNK",
    "DIGEST_KEY",
    "FLUSH_QUEUE",
    "DigestFlushWorker",
    "FlushResult",
    "aclose_windows",
    "aflush_window",
    "close_windows",
    "flush_job",
    "flush_window",
]

#: The queue flush jobs run in (the worker process runs it next to the dispatch queue).
FLUSH_QUEUE: Final = "chimeway_digest"
#: Buckets emitted per transaction: big enough to be set-wise, small enough to hold few locks.
CHUNK: Final = 500
#: The notification key of a digest's event, notification and delivery.
DIGEST_KEY: Final = "chimeway.digest"


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush call did: buckets emitted (or found empty), digest deliveries made and the
    members they carry; ``wait`` is the seconds until the window ends when it has not yet."""

    buckets: int = 0
    digests: int = 0
    members: int = 0
    wait: float | None = None

    def plus(self, buckets: int, rows: list[tuple[Any, ...]]) -> FlushResult:
        return FlushResult(
            self.buckets + buckets, self.digests + len(rows), self.members + sum(int(r[1]) for r in rows)
        )


def _params(bucket_id: uuid.UUID, chunk: int) -> dict[str, Any]:
    return {"bucket_id": bucket_id, "limit": chunk}


def _emit_params(ids: list[Any]) -> dict[str, Any]:
    """The locked buckets with the ids of the rows each may get: time-ordered, like a fan-out's,
    so a chunk's new index entries land side by side."""
    fresh = [uuid.UUID(int=i) for i in time_ordered_ids(3 * len(ids))]
    count = len(ids)
    return {
        "ids": ids,
        "event_ids": fresh[:count],
        "notification_ids": fresh[count : 2 * count],
        "digest_ids": fresh[2 * count :],
        "digest_key": DIGEST_KEY,
    }


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return chunk


def _waiting(rows: list[tuple[Any, ...]]) -> float | None:
    if rows and rows[0][0] == "pending" and float(rows[0][1]) > 0:
        return float(rows[0][1])
    return None


def flush_window(
    conn: psycopg.Connection[Any],
    bucket_id: uuid.UUID,
    *,
    schema: str = "public",
    queue_schema: str | None = None,
    chunk: int = CHUNK,
) -> FlushResult:
    """Flush the window ``bucket_id`` belongs to, a chunk per transaction on ``conn`` (which must
    not be in a transaction). Safe to run concurrently and again: a bucket is emitted once."""
    queries = queries_for(schema)
    jobs_schema = queue_schema or schema
    params = _params(bucket_id, _check_chunk(chunk))
    result = FlushResult()
    while True:
        with conn.transaction():
            ids = [row[0] for row in conn.execute(queries.digest_flush_lock, params).fetchall()]
            if not ids:
                break
            rows = conn.execute(queries.digest_flush_emit, _emit_params(ids)).fetchall()
            if rows:
                pgqueue.insert_all(conn, [dispatch_job(row[0]) for row in rows], schema=jobs_schema)
        result = result.plus(len(ids), rows)
    if result.buckets == 0:
        state = conn.execute(queries.digest_bucket_state, {"bucket_id": bucket_id}).fetchall()
        return FlushResult(wait=_waiting(state))
    return result


async def aflush_window(
    conn: psycopg.AsyncConnection[Any],
    bucket_id: uuid.UUID,
    *,
    schema: str = "public",
    queue_schema: str | None = None,
    chunk: int = CHUNK,
) -> FlushResult:
    """The async twin of :func:`flush_window`."""
    queries = queries_for(schema)
    jobs_schema = queue_schema or schema
    params = _params(bucket_id, _check_chunk(chunk))
    result = FlushResult()
    while True:
        async with conn.transaction():
            cursor = await conn.execute(queries.digest_flush_lock, params)
            ids = [row[0] for row in await cursor.fetchall()]
            if not ids:
                break
            cursor = await conn.execute(queries.digest_flush_emit, _emit_params(ids))
            rows = await cursor.fetchall()
            if rows:
                await pgqueue.ainsert_all(conn, [dispatch_job(row[0]) for row in rows], schema=jobs_schema)
        result = result.plus(len(ids), rows)
    if result.buckets == 0:
        cursor = await conn.execute(queries.digest_bucket_state, {"bucket_id": bucket_id})
        return FlushResult(wait=_waiting(await cursor.fetchall()))
    return result


def close_windows(
    conn: psycopg.Connection[Any], rule_key: str, *, schema: str = "public", queue_schema: str | None = None
) -> int:
    """End every open window of the rule ``rule_key`` now, so its buckets are flushed at once (an
    operator sending digests early); returns how many buckets it closed. Runs in ``conn``'s
    transaction (autocommit: on its own)."""
    queries = queries_for(schema, queue_schema)
    row = conn.execute(queries.digest_close_windows, {"rule_key": rule_key, "queue": FLUSH_QUEUE}).fetchone()
    return int(row[0]) if row else 0


async def aclose_windows(
    conn: psycopg.AsyncConnection[Any],
    rule_key: str,
    *,
    schema: str = "public",
    queue_schema: str | None = None,
) -> int:
    """The async twin of :func:`close_windows`."""
    queries = queries_for(schema, queue_schema)
    cursor = await conn.execute(queries.digest_close_windows, {"rule_key": rule_key, "queue": FLUSH_QUEUE})
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


class DigestFlushWorker(
    pgqueue.Worker,
    queue=FLUSH_QUEUE,
    max_attempts=20,
    unique={"fields": ["args"], "keys": ["bucket_id"], "period": None},
    name="chimeway.digests.DigestFlushWorker",
):
    """Flushes the window of one bucket (see the module doc), on the process's dispatcher's
    connections (``chimeway.dispatch.configure``)."""

    async def perform(self, job: pgqueue.Job) -> Any:
        try:
            bucket_id = uuid.UUID(str(job.args["bucket_id"]))
        except (KeyError, ValueError):
            return pgqueue.Cancel(f"args must carry a bucket_id (a UUID), got {job.args!r}")
        dispatcher = current_dispatcher()
        async with dispatcher.connection() as conn:
            result = await aflush_window(conn, bucket_id, schema=dispatcher.schema)
        if result.wait is not None:
            # run early (a clock moved, or a job inserted by hand): come back when the window ends
            return pgqueue.Snooze(math.ceil(result.wait))
        return None


def flush_job(bucket_id: uuid.UUID, window_ends_at: datetime) -> pgqueue.NewJob:
    """The unsaved flush job of a bucket, scheduled at its window's end."""
    return DigestFlushWorker.new({"bucket_id": str(bucket_id)}, scheduled_at=window_ends_at)
