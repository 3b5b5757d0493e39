"""``with inline():`` makes ``insert``/``ainsert`` perform jobs at once instead of writing them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import anyio

from ..executor import Execution, Executor
from ..insert import ainline_runner, inline_runner
from ..job import Job, JobState, NewJob
from ..worker import Worker, WorkerRegistry, registry
from .run import _execute, _worker_class, build_job

__all__ = ["inline"]


def _inline_job(execution: Execution) -> Job:
    job, ack = execution.job, execution.ack
    now = datetime.now(UTC)
    fields = {name: getattr(job, name) for name in Job._fields}
    fields["state"] = ack.state.value
    if ack.error is not None:
        fields["errors"] = [*job.errors, {"attempt": job.attempt, "at": now.isoformat(), "error": ack.error}]
    if ack.state is JobState.COMPLETED:
        fields["completed_at"] = now
    elif ack.state is JobState.CANCELLED:
        fields["cancelled_at"] = now
    elif ack.state is JobState.DISCARDED:
        fields["discarded_at"] = now
    elif ack.state in (JobState.RETRYABLE, JobState.SCHEDULED):
        fields["scheduled_at"] = now + timedelta(seconds=ack.delay)
    if ack.state is JobState.SCHEDULED:
        fields["attempt"] = job.attempt - 1
        fields["meta"] = {**job.meta, "snoozed": int(job.meta.get("snoozed", 0)) + 1}
    return Job(**fields)


def _inline_jobs(workers: WorkerRegistry, jobs: Sequence[NewJob]) -> list[tuple[type[Worker], Job]]:
    prepared = []
    for new in jobs:
        cls = _worker_class(new.worker, workers)
        prepared.append((cls, build_job(cls, new, attempt=1)))
    return prepared


@contextmanager
def inline(workers: WorkerRegistry = registry) -> Iterator[None]:
    """Within this block, ``insert``/``ainsert`` perform each job at once (scheduled ones too)
    instead of writing it, and return the job as its outcome left it. Exceptions propagate."""

    def run(jobs: Sequence[NewJob]) -> list[Job]:
        return [
            _inline_job(anyio.run(_execute, Executor(workers), job, False))
            for _, job in _inline_jobs(workers, jobs)
        ]

    async def arun(jobs: Sequence[NewJob]) -> list[Job]:
        executor = Executor(workers)
        return [
            _inline_job(await executor.execute(job, safe=False)) for _, job in _inline_jobs(workers, jobs)
        ]

    token = inline_runner.set(run)
    atoken = ainline_runner.set(arun)
    try:
        yield
    finally:
        inline_runner.reset(token)
        ainline_runner.reset(atoken)
