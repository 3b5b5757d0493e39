"""The trigger's side of digests: file the deliveries a rule holds into their buckets.

Planning's suppression statement already said which (recipient, channel) pairs a rule holds
(:attr:`chimeway.planning.FanOut.held`); those deliveries were written ``pending`` with no
dispatch job. One statement (``digest_hold.sql``) then moves them to ``digest_held`` in their
buckets, and this module inserts, in the same transaction, the flush job of every bucket it
created (scheduled at the window's end) and the dispatch job of any delivery whose bucket had
already been flushed. Nothing of this runs for a fan-out no rule holds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.drivers import AsyncWriter, SyncWriter

from ..dispatch import dispatch_job
from ..planning import FanOut
from ..store import Queries
from .flush import flush_job

__all__ = ["ahold", "hold"]


def _params(plan: FanOut, payload: Mapping[str, Any]) -> dict[str, Any]:
    positions = sorted(plan.held)
    recipients = [plan.recipients[plan.pair_recipient[p]] for p in positions]
    return {
        "deliveries": [uuid.UUID(int=plan.delivery_ids[p]) for p in positions],
        "rules": [plan.held[p] for p in positions],
        "recipients": [r.identity for r in recipients],
        "types": [r.type for r in recipients],
        "channels": [plan.pair_channel[p] for p in positions],
        # the trigger's params, validated and redacted: a rule's group_by reads its value here
        "payload": json.dumps(payload),
    }


def _jobs(rows: Sequence[Sequence[Any]]) -> tuple[list[pgqueue.NewJob], list[pgqueue.NewJob]]:
    flushes: list[pgqueue.NewJob] = []
    released: list[pgqueue.NewJob] = []
    for kind, ident, ends in rows:
        if kind == "flush":
            assert isinstance(ends, datetime)
            flushes.append(flush_job(uuid.UUID(ident), ends))
        else:
            released.append(dispatch_job(uuid.UUID(ident)))
    return flushes, released


def hold(
    writer: SyncWriter,
    session: Session,
    plan: FanOut,
    payload: Mapping[str, Any],
    queries: Queries,
    queue_schema: str,
) -> None:
    """File ``plan``'s held deliveries and insert their flush (and any release) jobs."""
    if not plan.held:
        return
    rows = writer.execute(queries.digest_hold, _params(plan, payload))
    flushes, released = _jobs(rows)
    if flushes:
        pgqueue.insert_all(session, flushes, schema=queue_schema)
    if released:
        jobs = pgqueue.insert_all(session, released, schema=queue_schema)
        plan.job_ids = [*plan.job_ids, *(job.id for job in jobs)]


async def ahold(
    writer: AsyncWriter,
    session: AsyncSession,
    plan: FanOut,
    payload: Mapping[str, Any],
    queries: Queries,
    queue_schema: str,
) -> None:
    """The async twin of :func:`hold`."""
    if not plan.held:
        return
    rows = await writer.execute(queries.digest_hold, _params(plan, payload))
    flushes, released = _jobs(rows)
    if flushes:
        await pgqueue.ainsert_all(session, flushes, schema=queue_schema)
    if released:
        jobs = await pgqueue.ainsert_all(session, released, schema=queue_schema)
        plan.job_ids = [*plan.job_ids, *(job.id for job in jobs)]
