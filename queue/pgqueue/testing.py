"""Helpers for testing code that uses pgqueue: run jobs directly, drain queues, check what is
enqueued, and run jobs inline at insert.

* :func:`perform_job` runs a worker through the real executor (timeout, result classification)
  without touching the database, and returns what ``perform`` returned.
* :func:`drain_queue` runs a queue's jobs to completion in the calling thread, acking each one,
  and counts the outcomes (Oban's ``drain_queue``).
* :func:`all_enqueued`, :func:`assert_enqueued`, :func:`refute_enqueued` inspect waiting jobs.
* ``with inline():`` makes ``insert``/``ainsert`` perform jobs at once instead of writing them.
"""

from __future__ import annotations

import inspect
import itertools
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads

from .errors import ConfigError
from .executor import Execution, Executor, Outcome, ack_statement, fetch_params, read_claim, read_claim_sync
from .insert import ainline_runner, inline_runner
from .job import Job, JobState, NewJob
from .manage import JobFilter, all_jobs
from .store import channel_name, queries_for
from .worker import JobOutcome, Worker, WorkerRegistry, registry

__all__ = [
    "DrainResult",
    "adrain_queue",
    "all_enqueued",
    "aperform_job",
    "assert_enqueued",
    "drain_queue",
    "inline",
    "perform_job",
    "refute_enqueued",
]

_ids = itertools.count(1)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def _worker_class(worker: type[Worker] | str, workers: WorkerRegistry) -> type[Worker]:
    if isinstance(worker, str):
        found = workers.get(worker)
        if found is None:
            raise ConfigError(f"unknown worker: {worker}")
        return found
    if not (isinstance(worker, type) and issubclass(worker, Worker)):
        raise ConfigError(f"worker must be a Worker subclass or a registered name, got {worker!r}")
    return worker


def build_job(
    worker: type[Worker], new: NewJob, *, attempt: int = 1, job_id: int | None = None, **fields: Any
) -> Job:
    """A :class:`Job` as the executor would see it after a fetch, built without a database."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": job_id if job_id is not None else next(_ids),
        "state": JobState.EXECUTING.value,
        "queue": new.queue,
        "worker": worker.name,
        # through JSON, as the database gives them back: keys become strings
        "args": json.loads(new.args_json),
        "meta": json.loads(new.meta_json),
        "tags": list(new.tags),
        "errors": [],
        "attempt": attempt,
        "max_attempts": new.max_attempts,
        "priority": new.priority,
        "inserted_at": now,
        "scheduled_at": now,
        "attempted_at": now,
        "attempted_by": ["test"],
        "completed_at": None,
        "cancelled_at": None,
        "discarded_at": None,
    }
    values.update(fields)
    return Job(**values)


def _check_result(worker: type[Worker], execution: Execution) -> Any:
    result = execution.result
    if inspect.isawaitable(result):
        raise AssertionError(
            f"{worker.name}.perform returned an awaitable it never awaited (a missing `await`?)"
        )
    if isinstance(result, BaseException) and not isinstance(result, JobOutcome):
        raise AssertionError(
            f"{worker.name}.perform returned {result!r}; raise it, or return pgqueue.Error(...) to fail"
        )
    return result


def _prepare(
    worker: type[Worker] | str,
    args: Mapping[str, Any] | None,
    attempt: int,
    max_attempts: int | None,
    workers: WorkerRegistry,
    options: dict[str, Any],
) -> tuple[type[Worker], Job]:
    cls = _worker_class(worker, workers)
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    new = cls.new(args or {}, **options)
    if not isinstance(attempt, int) or not 1 <= attempt <= new.max_attempts:
        raise ConfigError(f"attempt must be an integer 1..max_attempts ({new.max_attempts}), got {attempt!r}")
    return cls, build_job(cls, new, attempt=attempt)


def perform_job(
    worker: type[Worker] | str,
    args: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    workers: WorkerRegistry = registry,
    **options: Any,
) -> Any:
    """Run ``worker`` on ``args`` through the executor, without the database; return its result.

    Exceptions from ``perform`` (and timeouts) propagate. An outcome (``Cancel``, ``Snooze``, …)
    that ``perform`` raised is returned like one it returned. Other ``Worker.new`` options
    (``meta``, ``queue``, ``tags``, …) are accepted.
    """
    cls, job = _prepare(worker, args, attempt, max_attempts, workers, options)
    execution = anyio.run(_execute_unsafe, Executor(workers), job)
    return _check_result(cls, execution)


async def aperform_job(
    worker: type[Worker] | str,
    args: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    workers: WorkerRegistry = registry,
    **options: Any,
) -> Any:
    """The async twin of :func:`perform_job`, for tests that run in an event loop."""
    cls, job = _prepare(worker, args, attempt, max_attempts, workers, options)
    return _check_result(cls, await _execute_unsafe(Executor(workers), job))


async def _execute_unsafe(executor: Executor, job: Job) -> Execution:
    return await executor.execute(job, safe=False)


@dataclass
class DrainResult:
    """How many drained attempts ended each way (Oban's counters)."""

    success: int = 0
    failure: int = 0
    cancelled: int = 0
    discard: int = 0
    snoozed: int = 0
    executions: list[Execution] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {
            "cancelled": self.cancelled,
            "discard": self.discard,
            "failure": self.failure,
            "snoozed": self.snoozed,
            "success": self.success,
        }

    def count(self, execution: Execution) -> None:
        self.executions.append(execution)
        name = {
            Outcome.SUCCESS: "success",
            Outcome.FAILURE: "failure",
            Outcome.CANCELLED: "cancelled",
            Outcome.DISCARD: "discard",
            Outcome.SNOOZED: "snoozed",
        }[execution.outcome]
        setattr(self, name, getattr(self, name) + 1)


def _stage_params(schema: str, queue: str, with_scheduled: bool | datetime) -> dict[str, Any]:
    until = with_scheduled if isinstance(with_scheduled, datetime) else _FAR_FUTURE
    return {
        "until": until,
        "queue": queue,
        "limit": 1_000_000,
        "channel": channel_name(schema, "insert"),
        "notify": False,
    }


def drain_queue(
    conninfo: str | psycopg.Connection[Any],
    queue: str,
    *,
    schema: str = "public",
    with_scheduled: bool | datetime = False,
    with_recursion: bool = False,
    with_safety: bool = True,
    with_limit: int | None = None,
    workers: WorkerRegistry = registry,
) -> DrainResult:
    """Run the available jobs of ``queue`` in this thread, ack each, and count the outcomes.

    ``with_scheduled`` first makes scheduled and retryable jobs available (all of them, or those
    due by the given datetime); ``with_recursion`` keeps going while jobs keep appearing (jobs
    that insert jobs, retries with ``with_scheduled``); ``with_safety=False`` lets exceptions
    from ``perform`` propagate; ``with_limit`` caps how many jobs run. Each step commits, so pass
    a connection string or a connection whose open work may be committed.
    """
    queries = queries_for(schema)
    result = DrainResult()
    executor = Executor(workers)
    producer = str(uuid.uuid4())
    remaining = with_limit if with_limit is not None else 100_000_000
    own = isinstance(conninfo, str)
    conn = psycopg.connect(conninfo) if isinstance(conninfo, str) else conninfo
    try:
        with conn.cursor(row_factory=tuple_row) as cur:
            set_json_loads(orjson.loads, cur)  # decode as the runtime does (and as deep)
            while remaining > 0:
                if with_scheduled:
                    cur.execute(queries.stage_jobs, _stage_params(schema, queue, with_scheduled))
                params = fetch_params([], queue=queue, demand=remaining, node="drain", producer=producer)
                cur.execute(queries.fetch_jobs, params)
                _, jobs, undecodable = read_claim_sync(cur)
                if undecodable:
                    cur.execute(queries.fetch_jobs, fetch_params(undecodable))
                    result.discard += len(undecodable)
                conn.commit()
                if not jobs and not undecodable:
                    break
                for job in jobs:
                    execution = anyio.run(_execute, executor, job, with_safety)
                    cur.execute(
                        ack_statement(queries, "fetch_jobs", [execution.ack]), fetch_params([execution.ack])
                    )
                    conn.commit()
                    result.count(execution)
                remaining -= len(jobs) + len(undecodable)
                if not with_recursion:
                    break
    finally:
        if own:
            conn.close()
    return result


async def _execute(executor: Executor, job: Job, safe: bool) -> Execution:
    return await executor.execute(job, safe=safe)


async def adrain_queue(
    conninfo: str | psycopg.AsyncConnection[Any],
    queue: str,
    *,
    schema: str = "public",
    with_scheduled: bool | datetime = False,
    with_recursion: bool = False,
    with_safety: bool = True,
    with_limit: int | None = None,
    workers: WorkerRegistry = registry,
) -> DrainResult:
    """The async twin of :func:`drain_queue`."""
    queries = queries_for(schema)
    result = DrainResult()
    executor = Executor(workers)
    producer = str(uuid.uuid4())
    remaining = with_limit if with_limit is not None else 100_000_000
    own = isinstance(conninfo, str)
    conn = await psycopg.AsyncConnection.connect(conninfo) if isinstance(conninfo, str) else conninfo
    try:
        async with conn.cursor(row_factory=tuple_row) as cur:
            set_json_loads(orjson.loads, cur)  # decode as the runtime does (and as deep)
            while remaining > 0:
                if with_scheduled:
                    await cur.execute(queries.stage_jobs, _stage_params(schema, queue, with_scheduled))
                params = fetch_params([], queue=queue, demand=remaining, node="drain", producer=producer)
                await cur.execute(queries.fetch_jobs, params)
                _, jobs, undecodable = await read_claim(cur)
                if undecodable:
                    await cur.execute(queries.fetch_jobs, fetch_params(undecodable))
                    result.discard += len(undecodable)
                await conn.commit()
                if not jobs and not undecodable:
                    break
                for job in jobs:
                    execution = await executor.execute(job, safe=with_safety)
                    await cur.execute(
                        ack_statement(queries, "fetch_jobs", [execution.ack]), fetch_params([execution.ack])
                    )
                    await conn.commit()
                    result.count(execution)
                remaining -= len(jobs) + len(undecodable)
                if not with_recursion:
                    break
    finally:
        if own:
            await conn.close()
    return result


# -- what is enqueued ------------------------------------------------------------------------------


def _subset(expected: Any, actual: Any) -> bool:
    """Recursive subset match: dicts by key, "_" matches any present value, the rest by equality."""
    if expected == "_":
        return True
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _subset(value, actual[key]) for key, value in expected.items()
        )
    return bool(expected == actual)


def _near(expected: datetime | tuple[datetime, float], actual: datetime) -> bool:
    when, delta = expected if isinstance(expected, tuple) else (expected, 1.0)
    return abs((actual - when).total_seconds()) <= delta


def _matches(job: Job, criteria: Mapping[str, Any]) -> bool:
    for key, expected in criteria.items():
        if key in ("args", "meta"):
            if not _subset(json.loads(json.dumps(expected)), getattr(job, key)):
                return False
        elif key == "scheduled_at":
            if not _near(expected, job.scheduled_at):
                return False
        elif key == "scheduled_in":
            seconds, delta = expected if isinstance(expected, tuple) else (expected, 1.0)
            target = datetime.now(UTC) + timedelta(seconds=seconds)
            if not _near((target, delta), job.scheduled_at):
                return False
        elif key == "tags":
            if not set(expected) <= set(job.tags):
                return False
        elif getattr(job, key) != expected:
            return False
    return True


_CRITERIA = frozenset(
    {"worker", "queue", "args", "meta", "tags", "priority", "max_attempts", "scheduled_at", "scheduled_in"}
)


def _criteria(worker: type[Worker] | str | None, criteria: dict[str, Any]) -> dict[str, Any]:
    unknown = set(criteria) - _CRITERIA
    if unknown:
        raise ConfigError(
            f"unknown criterion {sorted(unknown)[0]!r}; valid: {sorted(_CRITERIA | {'worker'})}"
        )
    if worker is not None:
        criteria["worker"] = worker if isinstance(worker, str) else worker.name
    return criteria


def all_enqueued(
    target: Any, worker: type[Worker] | str | None = None, *, schema: str = "public", **criteria: Any
) -> list[Job]:
    """Jobs waiting to run (available or scheduled) that match, newest first.

    ``args``/``meta`` match as a recursive subset ("_" only requires the key); ``scheduled_at``
    within ±1 s (or ``(datetime, delta)``); ``scheduled_in`` seconds from now likewise; ``tags``
    as a subset; anything else (queue, priority, max_attempts) by equality.
    """
    wanted = _criteria(worker, dict(criteria))
    job_filter = JobFilter(state=[JobState.AVAILABLE.value, JobState.SCHEDULED.value])
    return [
        job for job in all_jobs(target, job_filter, schema=schema, limit=100_000) if _matches(job, wanted)
    ]


def _describe(jobs: Sequence[Job], keys: Sequence[str]) -> str:
    if not jobs:
        return "no jobs are enqueued"
    shown = [
        {k: getattr(j, k) for k in (keys or ("worker", "queue", "args")) if k in Job._fields} for j in jobs
    ]
    return "enqueued jobs:\n" + "\n".join(f"  {s}" for s in shown[:20])


def _rollback_if_idle_in_error(target: Any) -> None:
    conn = target if isinstance(target, psycopg.Connection) else None
    if conn is not None and conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()


def assert_enqueued(
    target: Any,
    worker: type[Worker] | str | None = None,
    *,
    schema: str = "public",
    timeout: float | None = None,
    **criteria: Any,
) -> Job:
    """Assert a matching job is enqueued (polling up to ``timeout`` seconds); return it."""
    for found in _poll_enqueued(target, worker, schema, timeout, criteria):
        if found:
            return found[0]
    wanted = _criteria(worker, dict(criteria))
    everything = all_enqueued(target, schema=schema)
    raise AssertionError(f"expected a job matching {wanted}; {_describe(everything, list(criteria))}")


def refute_enqueued(
    target: Any,
    worker: type[Worker] | str | None = None,
    *,
    schema: str = "public",
    timeout: float | None = None,
    **criteria: Any,
) -> None:
    """Assert no matching job is enqueued, now and (with ``timeout``) for that many seconds."""
    for found in _poll_enqueued(target, worker, schema, timeout, criteria):
        if found:
            wanted = _criteria(worker, dict(criteria))
            raise AssertionError(f"expected no job matching {wanted}; {_describe(found, list(criteria))}")


def _poll_enqueued(
    target: Any,
    worker: type[Worker] | str | None,
    schema: str,
    timeout: float | None,
    criteria: dict[str, Any],
) -> Iterator[list[Job]]:
    """The matching jobs, read once, then every 10 ms until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + (timeout or 0)
    while True:
        yield all_enqueued(target, worker, schema=schema, **criteria)
        if time.monotonic() >= deadline:
            return
        _commit_snapshot(target)
        time.sleep(0.01)


def _commit_snapshot(target: Any) -> None:
    # Polling from inside a REPEATABLE READ transaction would never see new jobs; a psycopg
    # connection that is idle in a transaction we only read in is safe to roll back.
    _rollback_if_idle_in_error(target)


# -- inline mode -----------------------------------------------------------------------------------


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
