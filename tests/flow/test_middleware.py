"""Middleware: the ordered chain around perform (sync and async workers) and around inserts."""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest

import pgqueue
from pgqueue import middleware
from pgqueue.runtime import Runtime
from tests.helpers import await_until

pytestmark = pytest.mark.anyio

SEEN: list[str] = []


class AsyncJob(pgqueue.Worker, queue="mw"):
    async def perform(self, job: pgqueue.Job) -> str:
        SEEN.append(f"perform {job.args['n']}")
        return "result"


class SyncJob(pgqueue.Worker, queue="mw"):
    def perform(self, job: pgqueue.Job) -> None:
        SEEN.append(f"sync perform {job.args['n']}")
        if job.args.get("fail"):
            raise RuntimeError("sync failure")


class Recording(pgqueue.Middleware):
    def __init__(self, name: str) -> None:
        self.name = name

    async def perform(self, job: pgqueue.Job, call_next: Callable[[], Awaitable[Any]]) -> Any:
        SEEN.append(f"{self.name} before {job.args['n']}")
        try:
            return await call_next()
        finally:
            SEEN.append(f"{self.name} after {job.args['n']}")

    def insert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], list[pgqueue.Job]],
    ) -> list[pgqueue.Job]:
        SEEN.append(f"{self.name} insert {len(jobs)}")
        return call_next([middleware.with_meta(job, **{self.name: True}) for job in jobs])

    async def ainsert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], Awaitable[list[pgqueue.Job]]],
    ) -> list[pgqueue.Job]:
        SEEN.append(f"{self.name} ainsert {len(jobs)}")
        return await call_next([middleware.with_meta(job, **{self.name: True}) for job in jobs])


class Refuse(pgqueue.Middleware):
    """Cancels jobs marked ``refuse`` without running them."""

    async def perform(self, job: pgqueue.Job, call_next: Callable[[], Awaitable[Any]]) -> Any:
        if job.args.get("refuse"):
            return pgqueue.Cancel("refused by middleware")
        return await call_next()


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    SEEN.clear()
    yield
    for installed in middleware.installed():
        middleware.remove(installed)


def test_insert_middleware_runs_in_order_and_may_change_the_jobs(
    db: psycopg.Connection[Any], schema: str
) -> None:
    middleware.add(Recording("outer"))
    middleware.add(Recording("inner"))
    saved = pgqueue.insert_all(db, [AsyncJob.new({"n": 1}), AsyncJob.new({"n": 2})], schema=schema)
    assert SEEN == ["outer insert 2", "inner insert 2"]
    stored = pgqueue.get_job(db, saved[0].id, schema=schema)
    assert stored is not None
    assert stored.meta == {"outer": True, "inner": True}


async def test_async_insert_middleware_runs_in_order(dsn: str, schema: str) -> None:
    middleware.add(Recording("outer"))
    middleware.add(Recording("inner"))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        job = await pgqueue.ainsert(conn, AsyncJob.new({"n": 1}), schema=schema)
        stored = await pgqueue.aget_job(conn, job.id, schema=schema)
    assert SEEN == ["outer ainsert 1", "inner ainsert 1"]
    assert stored is not None
    assert stored.meta == {"outer": True, "inner": True}


async def test_perform_middleware_wraps_sync_and_async_workers_in_order(
    dsn: str, db: psycopg.Connection[Any], schema: str
) -> None:
    # Given a process-wide middleware and one of the runtime's own
    middleware.add(Recording("global"))
    jobs = pgqueue.insert_all(
        db,
        [AsyncJob.new({"n": 1}), SyncJob.new({"n": 2}), SyncJob.new({"n": 3, "fail": True})],
        schema=schema,
    )
    SEEN.clear()
    async with Runtime(
        dsn, schema=schema, queues={"mw": 1}, plugins=[], middleware=[Recording("local")]
    ) as runtime:
        await await_until(lambda: len(SEEN) == 15, timeout=10)
        await runtime.wait_idle()

    # Then each attempt ran inside both, outermost first, and the outcome went through untouched
    for n, perform in ((1, "perform 1"), (2, "sync perform 2"), (3, "sync perform 3")):
        start = SEEN.index(f"global before {n}")
        assert SEEN[start : start + 5] == [
            f"global before {n}",
            f"local before {n}",
            perform,
            f"local after {n}",
            f"global after {n}",
        ]
    states = [pgqueue.get_job(db, job.id, schema=schema) for job in jobs]
    assert [job.state for job in states if job] == ["completed", "completed", "retryable"]
    failed = states[2]
    assert failed is not None
    assert "sync failure" in failed.errors[-1]["error"]


async def test_a_middleware_may_decide_the_outcome_without_running_the_job(
    dsn: str, db: psycopg.Connection[Any], schema: str
) -> None:
    [job] = pgqueue.insert_all(db, [AsyncJob.new({"n": 1, "refuse": True})], schema=schema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a perform coroutine created and never awaited would warn
        async with Runtime(
            dsn, schema=schema, queues={"mw": 1}, plugins=[], middleware=[Refuse()]
        ) as runtime:

            async def cancelled() -> bool:
                stored = pgqueue.get_job(db, job.id, schema=schema)
                return stored is not None and stored.state == "cancelled"

            await await_until(cancelled, timeout=10)
            await runtime.wait_idle()
    assert SEEN == []


def test_only_middleware_can_be_installed() -> None:
    with pytest.raises(TypeError, match="middleware must be a pgqueue.middleware.Middleware"):
        middleware.add(object())  # type: ignore[arg-type]
