"""The journey's jobs: a run's step job (:class:`JourneyWorker`) and its deliveries' dispatch
jobs (:class:`JourneyDispatchWorker`), both on the dispatch queue, run by ``chimeway.worker``.

A step job carries only the run id and the step's order; it is scheduled for the end of the
step's wait (a pgqueue scheduled job: nothing polls runs). A journey delivery's dispatch job is the
dispatch worker's, plus the run and step: its delivery goes through the same batches as any other
(:mod:`chimeway.dispatch.batcher`), and once it has an outcome (or a first temporary failure) the
job makes the run's next move itself. A worker killed after the delivery's record but before that
move leaves the dispatch job to the lifeline; its re-run finds the delivery ended and makes the
move then.

Moves are batched too: every job of one event loop asking for a move in the same turn is moved
in one transaction with the others (:class:`chimeway.journeys.moves.Mover`).
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import pgqueue

from ..dispatch import QUEUE, Dispatcher, DispatchWorker, current_dispatcher
from .moves import Mover
from .runs import JobFactories

__all__ = [
    "JourneyDispatchWorker",
    "JourneyWorker",
    "factories",
    "journey_dispatch_job",
    "mover_for",
    "step_job",
]

_movers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mover] = weakref.WeakKeyDictionary()


def mover_for(dispatcher: Dispatcher) -> Mover:
    """This event loop's :class:`Mover` on ``dispatcher``'s connections."""
    loop = asyncio.get_running_loop()
    mover = _movers.get(loop)
    if mover is None or mover.host is not dispatcher:
        mover = _movers[loop] = Mover(dispatcher, factories(), loop)
    return mover


def _ids(args: Mapping[str, Any]) -> tuple[uuid.UUID, int] | None:
    try:
        run_id = uuid.UUID(str(args["run_id"]))
        step = args["step"]
    except (KeyError, ValueError, TypeError):
        return None
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    return run_id, step


class JourneyWorker(pgqueue.Worker, queue=QUEUE, max_attempts=20, name="chimeway.journeys.JourneyWorker"):
    """Moves one journey run for one of its steps (see :mod:`chimeway.journeys.runs`)."""

    async def perform(self, job: pgqueue.Job) -> Any:
        ids = _ids(job.args)
        if ids is None:
            return pgqueue.Cancel(f"malformed journey job args: {sorted(job.args)}")
        return await mover_for(current_dispatcher()).advance(*ids)


class JourneyDispatchWorker(DispatchWorker, name="chimeway.journeys.JourneyDispatchWorker"):
    """The dispatch job of a journey's delivery: performs it as :class:`DispatchWorker` does (no
    paced hand-off), then, when the delivery has an outcome or failed for now, moves the run on
    itself (the move a step job would make, without a job's round trip through the queue)."""

    async def perform(self, job: pgqueue.Job) -> Any:
        dispatcher = current_dispatcher()
        result = await dispatcher.perform(job)
        ids = _ids(job.args)
        if ids is not None and (result is None or isinstance(result, pgqueue.Error)):
            # Killed before this commits, the job is rescued and re-run: its delivery has ended, so
            # the claim short-circuits and the move is made then.
            await mover_for(dispatcher).advance(*ids)
        return result


def step_job(run_id: uuid.UUID, step: int, schedule_in: float) -> pgqueue.NewJob:
    """The job that moves run ``run_id`` for its step ``step``, ``schedule_in`` seconds from now."""
    args: dict[str, Any] = {"run_id": str(run_id), "step": step}
    if schedule_in > 0:
        return JourneyWorker.new(args, schedule_in=schedule_in)
    return JourneyWorker.new(args)


def journey_dispatch_job(delivery_id: uuid.UUID, run_id: uuid.UUID, step: int) -> pgqueue.NewJob:
    """The dispatch job of a journey step's delivery."""
    return JourneyDispatchWorker.new({"delivery_id": str(delivery_id), "run_id": str(run_id), "step": step})


def factories() -> JobFactories:
    return JobFactories(step_job=step_job, dispatch_job=journey_dispatch_job)
