"""Workflows go through the same seams as insert_all: the insert middleware chain (and so tracing)
and pgqueue.testing.inline(), which runs the steps in dependency order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue import middleware
from pgqueue.testing import inline
from pgqueue.workflow import PARKED, WorkflowError

from .workers import Outcomes

RAN: list[str] = []


class Step(pgqueue.Worker, queue="seams"):
    """Records its step name, then does what its args say (ok, cancel, discard, error)."""

    def perform(self, job: pgqueue.Job) -> Any:
        RAN.append(job.meta["workflow"]["step"])
        action = job.args.get("action", "ok")
        if action == "cancel":
            return pgqueue.Cancel("because")
        if action == "discard":
            return pgqueue.Discard("nope")
        if action == "error":
            return pgqueue.Error("failed")
        return None


class Stamping(pgqueue.Middleware):
    """Stamps every inserted job's meta, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[pgqueue.NewJob]] = []

    def insert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], list[pgqueue.Job]],
    ) -> list[pgqueue.Job]:
        self.seen.append(list(jobs))
        return call_next([middleware.with_meta(job, stamped=True) for job in jobs])

    async def ainsert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], Awaitable[list[pgqueue.Job]]],
    ) -> list[pgqueue.Job]:
        self.seen.append(list(jobs))
        return await call_next([middleware.with_meta(job, stamped=True) for job in jobs])


@pytest.fixture
def stamping() -> Iterator[Stamping]:
    installed = Stamping()
    middleware.add(installed)
    try:
        yield installed
    finally:
        middleware.remove(installed)


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def _diamond() -> pgqueue.Workflow:
    flow = pgqueue.Workflow("diamond")
    top = flow.add("top", Step.new({}))
    left = flow.add("left", Step.new({}), deps=[top])
    right = flow.add("right", Step.new({}), deps=[top])
    flow.add("bottom", Step.new({}), deps=[right, left])
    return flow


def _rows(conn: psycopg.Connection[Any], schema: str) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        sql.SQL("SELECT meta -> 'workflow' ->> 'step', state::text, scheduled_at, meta FROM {}").format(
            sql.Identifier(schema, "jobs")
        )
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_the_insert_middleware_sees_a_workflow_as_one_insert_of_its_steps(
    conn: psycopg.Connection[Any], schema: str, stamping: Stamping
) -> None:
    jobs = pgqueue.insert_workflow(conn, _diamond(), schema=schema)
    conn.commit()

    assert len(stamping.seen) == 1
    assert [job.meta["workflow"]["step"] for job in stamping.seen[0]] == ["top", "left", "right", "bottom"]
    rows = _rows(conn, schema)
    assert all(meta["stamped"] is True for _, _, meta in rows.values())
    assert rows["top"][0] == "available"
    assert all(rows[name][:2] == ("scheduled", PARKED) for name in ("left", "right", "bottom"))
    assert jobs["bottom"].meta["stamped"] is True
    assert jobs["bottom"].state == "scheduled"


class Unparking(pgqueue.Middleware):
    def insert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], list[pgqueue.Job]],
    ) -> list[pgqueue.Job]:
        return call_next([job._replace(scheduled_at=None, schedule_in=None) for job in jobs])


class Dropping(pgqueue.Middleware):
    def insert(
        self,
        jobs: Sequence[pgqueue.NewJob],
        call_next: Callable[[Sequence[pgqueue.NewJob]], list[pgqueue.Job]],
    ) -> list[pgqueue.Job]:
        return call_next(jobs[1:])


def test_a_middleware_cannot_make_a_waiting_step_runnable(conn: psycopg.Connection[Any], schema: str) -> None:
    unparking = Unparking()
    middleware.add(unparking)
    try:
        pgqueue.insert_workflow(conn, _diamond(), schema=schema)
    finally:
        middleware.remove(unparking)
    conn.commit()

    rows = _rows(conn, schema)
    assert all(rows[name][:2] == ("scheduled", PARKED) for name in ("left", "right", "bottom"))


def test_a_middleware_that_drops_a_step_is_refused_and_nothing_is_written(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    dropping = Dropping()
    middleware.add(dropping)
    try:
        with pytest.raises(
            WorkflowError, match="one job per step of workflow 'diamond' \\(4\\), in order; got 3"
        ):
            pgqueue.insert_workflow(conn, _diamond(), schema=schema)
    finally:
        middleware.remove(dropping)
    conn.commit()

    assert _rows(conn, schema) == {}


@pytest.mark.anyio
async def test_ainsert_workflow_goes_through_the_async_middleware(
    aconn: psycopg.AsyncConnection[Any], schema: str, stamping: Stamping
) -> None:
    jobs = await pgqueue.ainsert_workflow(aconn, _diamond(), schema=schema)
    await aconn.commit()

    assert len(stamping.seen) == 1
    assert len(stamping.seen[0]) == 4
    assert all(job.meta["stamped"] is True for job in jobs.values())
    assert jobs["left"].state == "scheduled"


def test_inline_mode_runs_the_steps_in_dependency_order(stamping: Stamping) -> None:
    flow = pgqueue.Workflow("backwards")
    # added before the steps they depend on would run: the order comes from the graph
    flow.add("last", Step.new({}), deps=["middle"])
    flow.add("middle", Step.new({}), deps=["first"])
    flow.add("first", Step.new({}))

    with inline():
        jobs = pgqueue.insert_workflow(None, flow)

    assert RAN == ["first", "middle", "last"]
    assert {name: job.state for name, job in jobs.items()} == {
        "last": "completed",
        "middle": "completed",
        "first": "completed",
    }
    assert len(stamping.seen) == 1  # the middleware wraps inline inserts too, as for insert_all


def test_inline_mode_honours_each_steps_dependency_failure_policy() -> None:
    flow = pgqueue.Workflow()
    bad = flow.add("bad", Step.new({"action": "discard"}))
    flow.add("cancelled", Step.new({}), deps=[bad])
    flow.add("after_cancelled", Step.new({}), deps=["cancelled"])
    flow.add("anyway", Step.new({}), deps=[bad], on_dependency_failure="run")

    with inline():
        jobs = pgqueue.insert_workflow(None, flow)

    assert RAN == ["bad", "anyway"]
    assert jobs["bad"].state == "discarded"
    assert jobs["cancelled"].state == "cancelled"
    assert jobs["cancelled"].errors[0]["error"] == f"cancelled because job {jobs['bad'].id} was discarded"
    assert jobs["after_cancelled"].state == "cancelled"
    assert jobs["after_cancelled"].errors[0]["error"] == "cancelled because job 0 was cancelled"
    assert jobs["anyway"].state == "completed"


def test_inline_mode_refuses_what_it_cannot_honour_before_running_anything() -> None:
    signal = pgqueue.Workflow()
    first = signal.add("first", Step.new({}))
    signal.add("approve", Step.new({}), deps=[first], wait_for_signal="approved")
    by_id = pgqueue.Workflow()
    by_id.add("late", Step.new({}), deps=[12345])

    with inline():
        with pytest.raises(WorkflowError, match="waits for signal 'approved'"):
            pgqueue.insert_workflow(None, signal)
        with pytest.raises(WorkflowError, match="depends on job ids \\[12345\\] in the database"):
            pgqueue.insert_workflow(None, by_id)

    assert RAN == []


def test_inline_mode_raises_rather_than_run_a_step_after_a_dependency_that_would_retry() -> None:
    flow = pgqueue.Workflow()
    flaky = flow.add("flaky", Step.new({"action": "error"}))
    flow.add("after", Step.new({}), deps=[flaky])

    with inline(), pytest.raises(WorkflowError, match="its dependency 'flaky' ended retryable"):
        pgqueue.insert_workflow(None, flow)

    assert RAN == ["flaky"]


@pytest.mark.anyio
async def test_inline_mode_runs_an_async_inserted_workflow_in_dependency_order() -> None:
    with inline():
        jobs = await pgqueue.ainsert_workflow(None, _diamond())

    assert RAN[0] == "top"
    assert sorted(RAN[1:3]) == ["left", "right"]
    assert RAN[3] == "bottom"
    assert all(job.state == "completed" for job in jobs.values())


def test_outcomes_worker_steps_still_insert_without_middleware(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    flow.add("only", Outcomes.new({}))
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    assert jobs["only"].state == "available"
    assert "stamped" not in jobs["only"].meta
