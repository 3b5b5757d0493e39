"""Workers the chaos suite's ``python -m pgqueue start`` processes load (``--workers chaos.workers``).

Each records its completed executions (see :mod:`chaos.recording`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pgqueue

from .recording import (
    DSN_VARIABLE,
    EXECUTIONS_DDL,
    SCHEMA_VARIABLE,
    Recorded,
    record_early_run,
    record_execution,
    run_on_record_connection,
)

__all__ = [
    "DSN_VARIABLE",
    "EXECUTIONS_DDL",
    "SCHEMA_VARIABLE",
    "BatchCallback",
    "Busy",
    "Failing",
    "FlowStep",
    "HugeBackoff",
    "Long",
    "NulError",
    "Snoozer",
    "SurrogateError",
    "record_execution",
]


def _sleep(seconds: float) -> bool:
    """Sleep cooperatively; False when the runtime abandoned the attempt meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pgqueue.is_cancelled():
            return False
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return True


class Busy(Recorded):
    """Works ``args["ms"]`` milliseconds (default 0), records its execution and succeeds."""

    def perform(self, job: pgqueue.Job) -> None:
        if _sleep(float(job.args.get("ms", 0)) / 1000):
            record_execution(job)


class FlowStep(Recorded):
    """A workflow step: as it starts, writes each dependency not yet completed to ``early_runs``;
    then works ``args["ms"]`` milliseconds and records its execution."""

    def perform(self, job: pgqueue.Job) -> None:
        schema = os.environ[SCHEMA_VARIABLE]
        dependencies = run_on_record_connection(lambda conn: pgqueue.dependencies(conn, job, schema=schema))
        for dependency in dependencies:
            if dependency.state != "completed":
                record_early_run(job, f"job {dependency.id}", dependency.state)
        if _sleep(float(job.args.get("ms", 0)) / 1000):
            record_execution(job)


class BatchCallback(Recorded):
    """A batch's callback: as it starts, writes to ``early_runs`` when its batch has not got where
    its event says (``completed``: every member completed; ``finished``: none pending); then
    records its execution."""

    def perform(self, job: pgqueue.Job) -> None:
        schema = os.environ[SCHEMA_VARIABLE]
        batch = job.meta["batch"]
        progress = run_on_record_connection(
            lambda conn: pgqueue.batch_progress(conn, int(batch["id"]), schema=schema)
        )
        reached = (
            progress.completed == progress.total if batch["event"] == "completed" else not progress.pending
        )
        if not reached:
            seen = f"{progress.completed} of {progress.total} completed, {progress.pending} pending"
            record_early_run(job, f"batch {batch['id']} {batch['event']}", seen)
        record_execution(job)


class Long(Recorded):
    """Works ``args["seconds"]`` (``args["rescued_seconds"]`` once rescued), then records.

    With ``args["stale_answer"]`` the attempt that was *not* rescued answers ``Cancel``: if the
    completer's fence ever let a frozen node's late ack through, the job would end cancelled
    instead of completed, which the rescue scenario would see.
    """

    def perform(self, job: pgqueue.Job) -> Any:
        rescued = bool(job.meta.get("rescued")) if isinstance(job.meta, dict) else False
        seconds = float(
            job.args.get("rescued_seconds", job.args["seconds"]) if rescued else job.args["seconds"]
        )
        if not _sleep(seconds):
            return None
        record_execution(job)
        if job.args.get("stale_answer") and not rescued:
            return pgqueue.Cancel(f"stale answer of attempt {job.attempt}; the fence must refuse it")
        return None


class Snoozer(Recorded):
    """Snoozes on its first run (told apart by ``scheduled_at == inserted_at``), then records and succeeds."""

    def perform(self, job: pgqueue.Job) -> Any:
        if job.scheduled_at <= job.inserted_at:
            return pgqueue.Snooze(0.2)
        record_execution(job)
        return None


class Failing(pgqueue.Worker):
    """Always fails, with the default backoff: for jobs at the limits of ``max_attempts``."""

    def perform(self, job: pgqueue.Job) -> None:
        record_execution(job)
        raise RuntimeError(f"chaos: deliberate failure of attempt {job.attempt}")


# Poison: what a worker can hand back that PostgreSQL can't store as is (see chaos.poison).


class NulError(pgqueue.Worker, max_attempts=3):
    """Fails with a NUL in its message: PostgreSQL's text can't hold one."""

    def perform(self, job: pgqueue.Job) -> None:
        raise ValueError("unexpected byte in payload: \x00")


class SurrogateError(pgqueue.Worker, max_attempts=3):
    """Fails with a lone surrogate in its message, as an undecodable file name gives one."""

    def perform(self, job: pgqueue.Job) -> None:
        raise ValueError("can't open file b'\\xff': " + b"\xff".decode("utf-8", "surrogateescape"))


class HugeBackoff(pgqueue.Worker, max_attempts=100):
    """Fails, and asks to be retried in 2**50 seconds: past PostgreSQL's timestamps."""

    def perform(self, job: pgqueue.Job) -> None:
        raise RuntimeError("upstream down")

    def backoff(self, job: pgqueue.Job) -> float:
        return 2.0**50
