"""Workflows: dependencies released in the statement that finishes them, failure policies, bad input."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.executor import Ack, fetch_params
from pgqueue.job import JobState
from pgqueue.store import queries_for
from pgqueue.testing import drain_queue
from pgqueue.workflow import PARKED
from tests.helpers import wait_until

from .workers import Outcomes


def _state(conn: psycopg.Connection[Any], schema: str, job_id: int) -> str:
    conn.commit()
    row = conn.execute(
        sql.SQL("SELECT state::text FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")), (job_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _row(conn: psycopg.Connection[Any], schema: str, job_id: int, columns: str) -> tuple[Any, ...]:
    conn.commit()
    row = conn.execute(
        sql.SQL("SELECT " + columns + " FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        (job_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _count_jobs(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "jobs"))).fetchone()
    assert row is not None
    return int(row[0])


def _claim(conn: psycopg.Connection[Any], schema: str, queue: str = "alpha", demand: int = 100) -> list[int]:
    """Claim available jobs the way a producer does (state executing, attempt 1)."""
    rows = conn.execute(
        queries_for(schema).fetch_jobs, fetch_params([], queue=queue, demand=demand, node="t", producer="p")
    ).fetchall()
    conn.commit()
    return sorted(int(row[1]) for row in rows if row[1] is not None)


def _ack(conn: psycopg.Connection[Any], schema: str, acks: list[Ack]) -> None:
    conn.execute(queries_for(schema).fetch_jobs, fetch_params(acks))
    conn.commit()


def test_fan_out_then_fan_in_runs_each_step_after_its_dependencies(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow("order-1")
    root = flow.add("root", Outcomes.new({}))
    middle = [flow.add(f"part-{i}", Outcomes.new({"i": i}), deps=[root]) for i in range(5)]
    flow.add("join", Outcomes.new({}), deps=middle)
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    assert jobs["root"].state == "available"
    assert all(
        jobs[name].state == "scheduled" and jobs[name].scheduled_at == PARKED for name in [*middle, "join"]
    )
    assert jobs["join"].meta["workflow"] == {"id": "order-1", "step": "join"}

    result = drain_queue(dsn, "alpha", schema=schema, with_recursion=True)

    assert result.success == 7
    ids = {name: job.id for name, job in jobs.items()}
    root_done = _row(conn, schema, ids["root"], "completed_at")[0]
    for name in middle:
        attempted, completed = _row(conn, schema, ids[name], "attempted_at, completed_at")
        assert attempted >= root_done
        join_attempted = _row(conn, schema, ids["join"], "attempted_at")[0]
        assert join_attempted >= completed
    assert _row(conn, schema, ids["join"], "state::text, attempt") == ("completed", 1)


def test_two_dependencies_acked_in_one_statement_release_their_dependent_once(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    b = flow.add("b", Outcomes.new({}))
    flow.add("join", Outcomes.new({}), deps=[a, b])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    claimed = _claim(conn, schema)
    assert claimed == sorted([jobs["a"].id, jobs["b"].id])

    # One ack statement finishing both: the trigger counts them one after the other.
    _ack(conn, schema, [Ack(job_id, 1, JobState.COMPLETED) for job_id in claimed])

    assert _state(conn, schema, jobs["join"].id) == "available"
    waits = conn.execute(
        sql.SQL("SELECT pending, failed_deps FROM {} WHERE job_id = %s").format(
            sql.Identifier(schema, "pgqueue_workflow_waits")
        ),
        (jobs["join"].id,),
    ).fetchone()
    assert waits == (0, 0)


def test_dependencies_finished_by_two_concurrent_transactions_release_the_dependent(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    b = flow.add("b", Outcomes.new({}))
    flow.add("join", Outcomes.new({}), deps=[a, b])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    _claim(conn, schema)

    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute(
            queries_for(schema).fetch_jobs, fetch_params([Ack(jobs["a"].id, 1, JobState.COMPLETED)])
        )
        # `second` blocks on the dependent's waits row until `first` commits.
        thread = threading.Thread(
            target=lambda: _ack(second, schema, [Ack(jobs["b"].id, 1, JobState.COMPLETED)]), daemon=True
        )
        thread.start()
        wait_until(lambda: _waiting_on_lock(conn, second), message="the second ack never blocked")
        assert _state(conn, schema, jobs["join"].id) == "scheduled"
        first.commit()
        thread.join(10)
        assert not thread.is_alive()

    assert _state(conn, schema, jobs["join"].id) == "available"


def _waiting_on_lock(conn: psycopg.Connection[Any], other: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (other.info.backend_pid,)
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


def test_a_discarded_dependency_cancels_its_dependents_down_the_graph(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({"action": "discard"}))
    b = flow.add("b", Outcomes.new({}), deps=[a])
    flow.add("c", Outcomes.new({}), deps=[b])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    result = drain_queue(dsn, "alpha", schema=schema, with_recursion=True)

    assert (result.discard, result.success) == (1, 0)
    assert _state(conn, schema, jobs["b"].id) == "cancelled"
    assert _state(conn, schema, jobs["c"].id) == "cancelled"
    errors = _row(conn, schema, jobs["b"].id, "errors")[0]
    assert errors[-1]["error"] == f"cancelled because job {jobs['a'].id} was discarded"
    assert _row(conn, schema, jobs["c"].id, "errors")[0][-1]["error"].endswith(
        f"job {jobs['b'].id} was cancelled"
    )


def test_a_step_that_runs_anyway_runs_after_a_cancelled_dependency(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({"action": "cancel"}))
    ok = flow.add("ok", Outcomes.new({}))
    flow.add("cleanup", Outcomes.new({}), deps=[a, ok], on_dependency_failure="run")
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)

    assert _state(conn, schema, jobs["cleanup"].id) == "completed"
    deps = pgqueue.dependencies(conn, jobs["cleanup"], schema=schema)
    assert [(d.step, d.state) for d in deps] == [("a", "cancelled"), ("ok", "completed")]


class Counted(pgqueue.Worker, queue="alpha"):
    """Returns its args' value; a step with dependencies returns their results' sum instead."""

    #: where a step reads its dependencies from (set by the test; never carried in a job row)
    database: tuple[str, str] = ("", "public")

    def perform(self, job: pgqueue.Job) -> Any:
        if "value" in job.args:
            return job.args["value"]
        dsn, schema = self.database
        with psycopg.connect(dsn) as conn:
            deps = pgqueue.dependencies(conn, job, schema=schema)
        return {"sum": sum(int(d.result) for d in deps), "from": sorted(str(d.step) for d in deps)}


def test_a_step_reads_its_dependencies_results(
    conn: psycopg.Connection[Any], schema: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Counted, "database", (dsn, schema))
    flow = pgqueue.Workflow()
    a = flow.add("a", Counted.new({"value": 40}))
    b = flow.add("b", Counted.new({"value": 2}))
    flow.add("total", Counted.new({}), deps=[a, b])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    # Each step's return value is written by the ack that completes it; the last step reads both.
    assert drain_queue(dsn, "alpha", schema=schema, with_recursion=True).success == 3

    deps = pgqueue.dependencies(conn, jobs["total"].id, schema=schema)
    assert [(d.id, d.step, d.state, d.result) for d in deps] == [
        (jobs["a"].id, "a", "completed", 40),
        (jobs["b"].id, "b", "completed", 2),
    ]
    assert pgqueue.wait(dsn, jobs["total"].id, 5, schema=schema) == {"sum": 42, "from": ["a", "b"]}


def test_a_dependency_on_a_job_of_another_workflow(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    first = pgqueue.insert_workflow(conn, _single("first"), schema=schema)
    done = pgqueue.insert(conn, Outcomes.new({}), schema=schema)
    conn.commit()
    drain_queue(dsn, "alpha", schema=schema, with_limit=2)
    assert _state(conn, schema, done.id) == "completed"
    pending = pgqueue.insert(conn, Outcomes.new({}), schema=schema)
    conn.commit()

    flow = pgqueue.Workflow("second")
    flow.add("after-done", Outcomes.new({}), deps=[done.id])
    flow.add("after-pending", Outcomes.new({}), deps=[pending.id, first["only"].id])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    # A dependency that already completed holds nothing back.
    assert jobs["after-done"].state == "available"
    assert jobs["after-pending"].state == "scheduled"
    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)
    assert _state(conn, schema, jobs["after-pending"].id) == "completed"


def _single(workflow_id: str) -> pgqueue.Workflow:
    flow = pgqueue.Workflow(workflow_id)
    flow.add("only", Outcomes.new({}))
    return flow


def test_jobs_added_to_a_running_workflow_wait_for_its_running_step(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    jobs = pgqueue.insert_workflow(conn, _single("running"), schema=schema)
    conn.commit()
    (running,) = _claim(conn, schema)

    more = pgqueue.Workflow("running")
    more.add("later", Outcomes.new({}), deps=[running])
    added = pgqueue.insert_workflow(conn, more, schema=schema)
    conn.commit()
    assert added["later"].state == "scheduled"
    assert added["later"].meta["workflow"]["id"] == "running"

    _ack(conn, schema, [Ack(jobs["only"].id, 1, JobState.COMPLETED)])
    assert _state(conn, schema, added["later"].id) == "available"


def test_an_insert_racing_the_dependency_it_names_is_never_missed(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    jobs = pgqueue.insert_workflow(conn, _single("race"), schema=schema)
    conn.commit()
    (running,) = _claim(conn, schema)

    with psycopg.connect(dsn) as inserting, psycopg.connect(dsn) as acking:
        flow = pgqueue.Workflow("race")
        flow.add("after", Outcomes.new({}), deps=[running])
        added = pgqueue.insert_workflow(inserting, flow, schema=schema)
        # The ack waits for the inserting transaction, which holds the dependency's row.
        thread = threading.Thread(
            target=lambda: _ack(acking, schema, [Ack(jobs["only"].id, 1, JobState.COMPLETED)]), daemon=True
        )
        thread.start()
        wait_until(lambda: _waiting_on_lock(conn, acking), message="the ack never waited for the insert")
        inserting.commit()
        thread.join(10)
        assert not thread.is_alive()

    assert _state(conn, schema, added["after"].id) == "available"


def test_a_retried_or_rescued_dependency_never_releases_its_dependents_twice(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    # Rescued mid-run: back to available, not final, so b stays parked.
    (claimed,) = _claim(conn, schema)
    conn.execute(
        queries_for(schema).rescue_jobs, {"window": 0, "rescue_after": 0, "limit": 10, "channel": "x"}
    )
    conn.commit()
    assert _state(conn, schema, claimed) == "available"
    assert _state(conn, schema, jobs["b"].id) == "scheduled"
    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)
    assert _row(conn, schema, jobs["b"].id, "state::text, attempt") == ("completed", 1)

    # Run a again by hand: it was resolved when it first finished, so b is left alone.
    pgqueue.retry_job(conn, jobs["a"].id, schema=schema)
    conn.commit()
    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)
    assert _row(conn, schema, jobs["a"].id, "state::text, attempt") == ("completed", 3)
    assert _row(conn, schema, jobs["b"].id, "state::text, attempt") == ("completed", 1)


def test_a_dependency_the_lifeline_discards_cancels_its_dependents(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}, max_attempts=1))
    flow.add("b", Outcomes.new({}), deps=[a])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    _claim(conn, schema)

    # Its node stopped heartbeating on its last attempt: the rescue discards it.
    conn.execute(
        queries_for(schema).rescue_jobs, {"window": 0, "rescue_after": 0, "limit": 10, "channel": "x"}
    )
    conn.commit()

    assert _state(conn, schema, jobs["a"].id) == "discarded"
    assert _state(conn, schema, jobs["b"].id) == "cancelled"


def test_deleting_an_unfinished_dependency_cancels_its_dependents(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    pgqueue.delete_job(conn, jobs["a"].id, schema=schema)
    conn.commit()

    assert _state(conn, schema, jobs["b"].id) == "cancelled"


def test_a_dependency_finished_retried_then_deleted_is_not_counted_twice(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    other = flow.add("other", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a, other])
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()
    _claim(conn, schema)
    _ack(conn, schema, [Ack(jobs["a"].id, 1, JobState.COMPLETED)])
    pgqueue.retry_job(conn, jobs["a"].id, schema=schema)
    conn.commit()

    pgqueue.delete_job(conn, jobs["a"].id, schema=schema)
    conn.commit()

    # a counted once, when it completed: b still waits for `other` only, and runs after it
    assert _state(conn, schema, jobs["b"].id) == "scheduled"
    _ack(conn, schema, [Ack(jobs["other"].id, 1, JobState.COMPLETED)])
    assert _state(conn, schema, jobs["b"].id) == "available"
    resolved = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE dep_id = %s").format(
            sql.Identifier(schema, "pgqueue_workflow_resolved")
        ),
        (jobs["a"].id,),
    ).fetchone()
    assert resolved == (0,)


def test_not_before_schedules_the_step_once_its_dependencies_finish(
    conn: psycopg.Connection[Any], schema: str, dsn: str
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a], not_before=later)
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    conn.commit()

    drain_queue(dsn, "alpha", schema=schema, with_recursion=True)

    state, scheduled_at = _row(conn, schema, jobs["b"].id, "state::text, scheduled_at")
    assert state == "scheduled"
    assert abs((scheduled_at - later).total_seconds()) < 0.001
    # The stager runs it when due, like any scheduled job.
    drain_queue(dsn, "alpha", schema=schema, with_scheduled=later + timedelta(seconds=1))
    assert _state(conn, schema, jobs["b"].id) == "completed"


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda f: [f.add("a", Outcomes.new({}), deps=["b"]), f.add("b", Outcomes.new({}), deps=["a"])],
         pgqueue.DependencyCycleError, "cycle: a -> b -> a"),
        (lambda f: f.add("a", Outcomes.new({}), deps=["a"]),
         pgqueue.DependencyCycleError, "depends on itself"),
        (lambda f: f.add("a", Outcomes.new({}), deps=["nope"]), pgqueue.MissingDependencyError, "'nope'"),
        (lambda f: [f.add("a", Outcomes.new({})), f.add("b", Outcomes.new({}), deps=["a", 987654321])],
         pgqueue.MissingDependencyError, "[987654321]"),
    ],
)  # fmt: skip
def test_bad_graphs_are_refused_and_nothing_is_written(
    conn: psycopg.Connection[Any], schema: str, build: Any, error: type[Exception], message: str
) -> None:
    flow = pgqueue.Workflow()
    build(flow)

    with pytest.raises(error, match=None) as raised:
        pgqueue.insert_workflow(conn, flow, schema=schema)

    assert message in str(raised.value)
    assert _count_jobs(conn, schema) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_dependency_failure": "retry"}, "on_dependency_failure must be 'cancel' or 'run', got 'retry'"),
        ({"wait_for_signal": ""}, "wait_for_signal must be a signal name"),
        ({"signal_timeout": 5}, "signal_timeout needs wait_for_signal"),
        ({"wait_for_signal": "x", "signal_timeout": -1}, "signal_timeout must be a positive number"),
        ({"not_before": datetime(2030, 1, 1)}, "not_before must be an aware datetime"),
        ({"deps": "a"}, "deps must be a list"),
    ],
)
def test_bad_step_options_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    flow = pgqueue.Workflow()
    with pytest.raises(pgqueue.WorkflowError) as raised:
        flow.add("step", Outcomes.new({}), **kwargs)
    assert message in str(raised.value)
    assert "'step'" in str(raised.value)


def test_a_waiting_step_cannot_also_set_its_own_schedule() -> None:
    flow = pgqueue.Workflow()
    flow.add("a", Outcomes.new({}))
    with pytest.raises(pgqueue.WorkflowError, match="not_before instead"):
        flow.add("b", Outcomes.new({}, schedule_in=30), deps=["a"])


@pytest.mark.anyio
async def test_async_insert_runs_in_the_callers_transaction(
    aconn: psycopg.AsyncConnection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a])
    jobs = await pgqueue.ainsert_workflow(aconn, flow, schema=schema)
    assert jobs["b"].state == "scheduled"
    await aconn.rollback()

    cur = await aconn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "jobs")))
    assert await cur.fetchone() == (0,)
    cur = await aconn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "pgqueue_workflow_deps"))
    )
    assert await cur.fetchone() == (0,)


def test_a_workflow_inserted_through_a_sqlalchemy_session_commits_with_it(
    sa_session: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    a = flow.add("a", Outcomes.new({}))
    flow.add("b", Outcomes.new({}), deps=[a])
    jobs = pgqueue.insert_workflow(sa_session, flow, schema=schema)
    assert _count_jobs(conn, schema) == 0  # not visible before the session commits
    conn.commit()

    sa_session.commit()

    assert _count_jobs(conn, schema) == 2
    assert _state(conn, schema, jobs["b"].id) == "scheduled"
    assert pgqueue.signal(sa_session, "unused", schema=schema) == 0
    sa_session.commit()
