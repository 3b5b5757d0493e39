"""Workflows under ``pgqueue.testing.inline()``: every step performed at insert, in dependency order.

Inline mode has no database, so it runs what it can honour and refuses the rest before running
anything: a step that waits for a signal or for ``not_before``, or that depends on a job id
already in the database, raises :class:`~pgqueue.workflow.WorkflowError`. The steps run one at a
time through the inline runner (so each goes through the same executor as an inline ``insert``),
a step only after every step it depends on; among steps ready at once, in the order they were
added. A step whose dependency ended ``cancelled`` or ``discarded`` follows its policy: under
``"cancel"`` it is not performed and comes back ``cancelled`` with the reason in its errors, as
the trigger would leave it; under ``"run"`` it is performed. A dependency that ended anywhere else
(``retryable``, or ``scheduled`` by a snooze) would need a later attempt that inline mode can't
run, so its dependents raise rather than run early. Exceptions from ``perform`` propagate, as
for any inline insert.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from .job import Job, JobState, NewJob
from .workflow_step import Step, WorkflowError

__all__ = ["arun_inline", "run_inline"]

_FAILED = (JobState.CANCELLED.value, JobState.DISCARDED.value)


def _refuse(steps: Sequence[Step]) -> None:
    for step in steps:
        if step.signal is not None:
            raise WorkflowError(
                f"inline mode can't run step {step.name!r}: it waits for signal {step.signal!r}, and "
                "inline mode has no database to send one through; test it against a database "
                "(pgqueue.testing.drain_queue)"
            )
        if step.not_before is not None:
            raise WorkflowError(
                f"inline mode can't run step {step.name!r}: it waits until not_before; test it "
                "against a database (pgqueue.testing.drain_queue)"
            )
        existing = [dep for dep in step.deps if isinstance(dep, int)]
        if existing:
            raise WorkflowError(
                f"inline mode can't run step {step.name!r}: it depends on job ids {existing!r} "
                "in the database; test it against a database (pgqueue.testing.drain_queue)"
            )


def _order(steps: Sequence[Step]) -> list[int]:
    """Indexes of ``steps`` in dependency order; ties in the order the steps were added (the
    workflow was checked for cycles and unknown steps when it was planned)."""
    index = {step.name: i for i, step in enumerate(steps)}
    waiting = [len(step.deps) for step in steps]
    dependents: list[list[int]] = [[] for _ in steps]
    for i, step in enumerate(steps):
        for dep in step.deps:
            dependents[index[str(dep)]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for dependent in dependents[i]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    return order


def _verdict(step: Step, finished: dict[str, Job]) -> str | None:
    """Why ``step`` is cancelled instead of run, or None to run it; raises if it can't run."""
    reason = None
    for dep in step.deps:
        job = finished[str(dep)]
        if job.state in _FAILED:
            reason = f"job {job.id} was {job.state}"
        elif job.state != JobState.COMPLETED.value:
            raise WorkflowError(
                f"inline mode can't run step {step.name!r}: its dependency {dep!r} ended {job.state} "
                "and would run again later, which inline mode can't wait for"
            )
    return reason if reason is not None and step.on_dependency_failure == "cancel" else None


def _cancelled(new: NewJob, reason: str) -> Job:
    """The job a step cancelled by a failed dependency comes back as: never performed."""
    now = datetime.now(UTC)
    return Job(
        id=0,
        state=JobState.CANCELLED.value,
        queue=new.queue,
        worker=new.worker,
        args=new.args,
        meta=new.meta,
        tags=list(new.tags),
        errors=[{"attempt": 0, "at": now.isoformat(), "error": f"cancelled because {reason}"}],
        attempt=0,
        max_attempts=new.max_attempts,
        priority=new.priority,
        inserted_at=now,
        scheduled_at=now,
        attempted_at=None,
        attempted_by=[],
        completed_at=None,
        cancelled_at=now,
        discarded_at=None,
    )


def run_inline(
    steps: Sequence[Step], jobs: Sequence[NewJob], runner: Callable[[Sequence[NewJob]], list[Job]]
) -> list[Job]:
    """Run the workflow's ``jobs`` (one per step, in step order) through the inline ``runner``."""
    _refuse(steps)
    finished: dict[str, Job] = {}
    for i in _order(steps):
        step = steps[i]
        reason = _verdict(step, finished)
        finished[step.name] = _cancelled(jobs[i], reason) if reason else runner([jobs[i]])[0]
    return [finished[step.name] for step in steps]


async def arun_inline(
    steps: Sequence[Step],
    jobs: Sequence[NewJob],
    runner: Callable[[Sequence[NewJob]], Awaitable[list[Job]]],
) -> list[Job]:
    """The async twin of :func:`run_inline`."""
    _refuse(steps)
    finished: dict[str, Job] = {}
    for i in _order(steps):
        step = steps[i]
        reason = _verdict(step, finished)
        finished[step.name] = _cancelled(jobs[i], reason) if reason else (await runner([jobs[i]]))[0]
    return [finished[step.name] for step in steps]
