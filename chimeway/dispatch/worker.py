"""The queue's side: :class:`DispatchWorker`, the process-wide dispatcher it uses, and enqueueing."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pgqueue

from ..errors import ChimewayError
from .contract import CRASH_ALLOWANCE, DELIVERY_ATTEMPTS, QUEUE
from .dispatcher import Dispatcher

__all__ = [
    "DispatchWorker",
    "PacedDispatchWorker",
    "aenqueue_in",
    "configure",
    "current_dispatcher",
    "dispatch_job",
    "enqueue_in",
    "paced_job",
]

_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def configure(dispatcher: Dispatcher | None) -> None:
    """Install the :class:`Dispatcher` the dispatch worker uses in this process (None to clear)."""
    global _dispatcher
    with _dispatcher_lock:
        _dispatcher = dispatcher


def current_dispatcher() -> Dispatcher:
    if _dispatcher is None:
        raise ChimewayError(
            "chimeway.dispatch.configure(Dispatcher(...)) has not been called in this process"
        )
    return _dispatcher


class DispatchWorker(
    pgqueue.Worker,
    queue=QUEUE,
    max_attempts=DELIVERY_ATTEMPTS + CRASH_ALLOWANCE,
    unique={"fields": ["args"], "keys": ["delivery_id"], "period": 60},
    name="chimeway.dispatch.DispatchWorker",
):
    """Performs one delivery; see :mod:`chimeway.dispatch` for the contract."""

    async def perform(self, job: pgqueue.Job) -> Any:
        dispatcher = current_dispatcher()
        # A delivery on a channel with provider limits goes to its account's paced queue (see
        # chimeway.channel_limits); the first job ends there.
        if dispatcher.limits and job.queue == QUEUE and await dispatcher.hand_off(job, paced_job):
            return None
        return await dispatcher.perform(job)

    def backoff(self, job: pgqueue.Job) -> float:
        configured = _dispatcher.retry_backoff if _dispatcher is not None else None
        return configured if configured is not None else super().backoff(job)

    def timeout(self, job: pgqueue.Job) -> float | None:
        # The slowest channel's deadline plus the claim and the record: a backstop only, as each
        # adapter call has its own deadline and the batch finishes a delivery even past this.
        return _dispatcher.job_timeout() if _dispatcher is not None else None


class PacedDispatchWorker(
    DispatchWorker,
    # The worker is part of the key: the hand-off happens while the first job (same args) runs.
    unique={"fields": ["worker", "args"], "keys": ["delivery_id"], "period": None},
    name="chimeway.dispatch.PacedDispatchWorker",
):
    """A dispatch job in a provider account's paced queue: performs the delivery as
    :class:`DispatchWorker` does, admitted by pgqueue's limits of that queue."""

    async def perform(self, job: pgqueue.Job) -> Any:
        return await current_dispatcher().perform(job)


def paced_job(delivery_id: uuid.UUID, queue: str) -> pgqueue.NewJob:
    """The paced dispatch job of ``delivery_id`` in ``queue`` (an account's queue)."""
    return PacedDispatchWorker.new({"delivery_id": str(delivery_id)}, queue=queue)


def dispatch_job(delivery_id: uuid.UUID | str, schedule_in: float | None = None) -> pgqueue.NewJob:
    """The unsaved dispatch job of a delivery (args: only its id, as a string), to run now or
    ``schedule_in`` seconds from now."""
    args = {"delivery_id": str(uuid.UUID(str(delivery_id)))}
    if schedule_in is None:
        return DispatchWorker.new(args)
    return DispatchWorker.new(args, schedule_in=schedule_in)


def enqueue_in(session: Any, delivery_id: uuid.UUID | str, *, schema: str = "public") -> pgqueue.Job:
    """Insert the dispatch job of ``delivery_id`` in ``session``'s transaction.

    ``session`` is anything :func:`pgqueue.insert` takes: a SQLAlchemy ``Session`` or
    ``Connection`` on psycopg or psycopg2 (also the sync session inside ``AsyncSession.run_sync``),
    a psycopg or psycopg2 connection. Rolling back removes the job with the
    delivery; committing makes both visible and wakes the queue. ``schema`` is where the queue's
    ``jobs`` table lives.
    """
    return pgqueue.insert(session, dispatch_job(delivery_id), schema=schema)


async def aenqueue_in(session: Any, delivery_id: uuid.UUID | str, *, schema: str = "public") -> pgqueue.Job:
    """The async twin of :func:`enqueue_in`: an ``AsyncSession``/``AsyncConnection`` on psycopg or
    asyncpg, a psycopg ``AsyncConnection``, an asyncpg connection."""
    return await pgqueue.ainsert(session, dispatch_job(delivery_id), schema=schema)
