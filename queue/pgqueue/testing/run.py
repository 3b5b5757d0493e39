"""Running jobs in a test: :func:`perform_job` through the real executor without the database,
:func:`drain_queue` through the database, acking each job (Oban's ``drain_queue``)."""

from __future__ import annotations

import inspect
import itertools
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads

from ..errors import ConfigError
from ..executor import Execution, Executor, Outcome, ack_statement, fetch_params, read_claim, read_claim_sync
from ..job import Job, JobState, NewJob
from ..store import channel_name, queries_for
from ..worker import JobOutcome, Worker, WorkerRegistry, registry

__all__ = ["DrainResult", "adrain_queue", "aperform_job", "build_job", "drain_queue", "perform_job"]

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
