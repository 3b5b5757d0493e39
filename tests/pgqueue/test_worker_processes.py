"""Sync jobs in worker processes (``Runtime(processes=N)``): real processes, a real database.

The workers (:mod:`tests.pgqueue.process_workers`) record each attempt they start and finish in
the schema's ``runs`` table with their pid and the database's clock; those rows and the jobs
table are the evidence. Every wait polls against a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.errors import ConfigError
from pgqueue.plugins.stager import Stager
from pgqueue.processes import ProcessPool, WorkerProcessError
from pgqueue.runtime import Runtime

from ..helpers import await_until, wait_until
from .process_workers import DSN_VARIABLE, RUNS_DDL, SCHEMA_VARIABLE, Forever, Outcome, Spin

pytestmark = pytest.mark.anyio

WORKERS = "tests.pgqueue.process_workers"
REPOSITORY = Path(__file__).resolve().parents[2]
#: allowance for process start-up and polling on a loaded machine
MARGIN = 5.0
ASYNC_PIDS: list[int] = []


class OnTheLoop(pgqueue.Worker, queue="cpu"):
    """An async worker: it keeps running on the node's event loop, never in a worker process."""

    async def perform(self, job: pgqueue.Job) -> None:
        ASYNC_PIDS.append(os.getpid())


@pytest.fixture
def runs(dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[psycopg.Connection[Any]]:
    """The ``runs`` table, and a connection to read it; the worker processes inherit the variables."""
    monkeypatch.setenv(DSN_VARIABLE, dsn)
    monkeypatch.setenv(SCHEMA_VARIABLE, schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RUNS_DDL.format(sql.Identifier(schema)))
        yield conn


def make_runtime(dsn: str, schema: str, **options: Any) -> Runtime:
    defaults: dict[str, Any] = {
        "schema": schema,
        "queues": {"cpu": 2},
        "workers": [WORKERS],
        "processes": 2,
        "heartbeat_interval": 0.2,
        "plugins": [Stager(interval=0.2)],
        "shutdown_grace_period": 10.0,
    }
    return Runtime(dsn, **{**defaults, **options})


def run_rows(conn: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    statement = sql.SQL(
        "SELECT job_id, attempt, pid, started_at, finished_at FROM {} ORDER BY started_at"
    ).format(sql.Identifier(schema, "runs"))
    return conn.execute(statement).fetchall()


def job(conn: psycopg.Connection[Any], schema: str, job_id: int) -> pgqueue.Job:
    found = pgqueue.get_job(conn, job_id, schema=schema)
    assert found is not None
    return found


def insert(conn: psycopg.Connection[Any], schema: str, *jobs: pgqueue.NewJob) -> list[int]:
    with conn.transaction():
        return [inserted.id for inserted in pgqueue.insert_all(conn, list(jobs), schema=schema)]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_cpu_bound_jobs_run_at_once_in_distinct_processes(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    ids = insert(runs, schema, Spin.new({"cpu": 1.0}), Spin.new({"cpu": 1.0}), OnTheLoop.new({}))
    async with make_runtime(dsn, schema) as runtime:
        assert runtime.process_pool is not None
        children = set(runtime.process_pool.pids)
        await await_until(
            lambda: all(job(runs, schema, i).state == "completed" for i in ids), timeout=20 + MARGIN
        )
    rows = run_rows(runs, schema)
    assert len(rows) == 2
    pids = {row[2] for row in rows}
    # Two processes of the pool, not the node: each spun its CPU second on a core of its own...
    assert len(pids) == 2
    assert pids <= children
    assert os.getpid() not in pids
    # ...at the same time: each started before the other finished.
    (_, _, _, first_start, first_end), (_, _, _, second_start, second_end) = rows
    assert second_start < first_end
    assert first_start < second_end
    assert [os.getpid()] == ASYNC_PIDS
    assert all(not alive(pid) for pid in children)


async def test_outcomes_and_results_cross_the_process_boundary(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    ends = ["return", "raise", "snooze", "cancel", "discard", "error", "unjsonable"]
    ids = insert(runs, schema, *(Outcome.new({"end": end, "value": "x\n\u00e9"}) for end in ends))
    async with make_runtime(dsn, schema, processes=1):
        await await_until(
            lambda: all(job(runs, schema, i).state not in ("available", "executing") for i in ids),
            timeout=10 + MARGIN,
        )
    states = {end: job(runs, schema, i) for end, i in zip(ends, ids, strict=True)}
    assert states["return"].state == "completed"
    assert states["unjsonable"].state == "completed"
    assert states["raise"].state == "retryable"
    assert "ValueError: bad value 'x\\né'" in states["raise"].errors[0]["error"]
    assert "Traceback" in states["raise"].errors[0]["error"]
    assert states["snooze"].state == "scheduled"
    assert states["snooze"].meta.get("snoozed") == 1
    assert states["cancel"].state == "cancelled"
    assert states["cancel"].errors[0]["error"] == "Cancel: 'not wanted'"
    assert states["discard"].state == "discarded"
    assert states["discard"].errors[0]["error"] == "Discard: {'why': 'broken'}"
    assert states["error"].state == "retryable"
    assert states["error"].errors[0]["error"] == "Error: 'try again'"


async def test_pool_returns_results_as_json_and_reports_job_fields(dsn: str, schema: str) -> None:
    pool = ProcessPool(1, [WORKERS])
    await pool.start()
    try:
        (pid,) = pool.pids
        at = datetime(2026, 12, 5, 3, 15, 0, 250_000, tzinfo=UTC)
        args = {"end": "return", "n": [1, 2.5, None]}
        given = pgqueue.Job(
            7,
            "executing",
            "cpu",
            Outcome.name,
            args,
            {},
            [],
            [],
            1,
            5,
            0,
            at,
            at,
            at,
            ["node", "uuid"],
            None,
            None,
            None,
        )
        result = await pool.perform(given)
        assert result == {"pid": pid, "args": args, "attempted_by": ["node", "uuid"], "at": at.isoformat()}
        unjsonable = await pool.perform(given._replace(args={"end": "unjsonable"}))
        assert unjsonable.startswith("<object object at")
    finally:
        await pool.stop()
    assert not alive(pid)


async def test_timeout_kills_a_busy_looping_job_and_the_next_job_runs(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    (stuck,) = insert(runs, schema, Forever.new({"timeout": 1.0}))
    async with make_runtime(dsn, schema, processes=1) as runtime:
        assert runtime.process_pool is not None
        rows = await await_until(lambda: run_rows(runs, schema), timeout=MARGIN)
        stuck_pid = rows[0][2]
        failed = await await_until(
            lambda: (found := job(runs, schema, stuck)).state == "retryable" and found, timeout=1 + MARGIN
        )
        (after,) = insert(runs, schema, Spin.new({"cpu": 0.1}))
        await await_until(lambda: job(runs, schema, after).state == "completed", timeout=MARGIN)
        assert runtime.process_pool.replaced == 1
        assert stuck_pid not in runtime.process_pool.pids
    error = failed.errors[0]
    assert error["error"].startswith("pgqueue.errors.TimeoutError: ")
    assert "timed out after 1s" in error["error"]
    # Killed at its timeout, not whenever: the error is written within the margin of it.
    started = rows[0][3]
    assert (datetime.fromisoformat(error["at"]) - started).total_seconds() < 1 + MARGIN
    assert not alive(stuck_pid)
    (spin_row,) = [row for row in run_rows(runs, schema) if row[0] == after]
    assert spin_row[2] != stuck_pid


async def test_a_process_killed_mid_job_fails_the_attempt_which_retries_on_a_new_process(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    (victim,) = insert(runs, schema, Spin.new({"cpu": 60.0, "retry_cpu": 0.1}))
    async with make_runtime(dsn, schema, processes=1) as runtime:
        assert runtime.process_pool is not None
        rows = await await_until(lambda: run_rows(runs, schema), timeout=MARGIN)
        killed = rows[0][2]
        os.kill(killed, signal.SIGKILL)
        done = await await_until(
            lambda: (found := job(runs, schema, victim)).state == "completed" and found, timeout=2 * MARGIN
        )
        assert runtime.process_pool.replaced == 1
    assert done.attempt == 2
    assert f"the worker process {killed} was killed by SIGKILL during the job" in done.errors[0]["error"]
    second = [row for row in run_rows(runs, schema) if row[1] == 2]
    assert len(second) == 1
    assert second[0][2] != killed
    assert not alive(killed)


async def test_cancelling_a_job_in_a_process_kills_that_process(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    (stuck,) = insert(runs, schema, Forever.new({}))
    async with make_runtime(dsn, schema, processes=1) as runtime:
        assert runtime.process_pool is not None
        rows = await await_until(lambda: run_rows(runs, schema), timeout=MARGIN)
        assert await runtime.cancel_job(stuck)
        await await_until(lambda: not alive(rows[0][2]), timeout=MARGIN)
        (after,) = insert(runs, schema, Spin.new({"cpu": 0.1}))
        await await_until(lambda: job(runs, schema, after).state == "completed", timeout=MARGIN)
        assert runtime.process_pool.replaced == 1
    assert job(runs, schema, stuck).state == "cancelled"


async def test_stop_lets_running_jobs_finish_then_reaps_every_process(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    ids = insert(runs, schema, Spin.new({"cpu": 1.5}), Spin.new({"cpu": 1.5}))
    # A grace period far past the jobs' CPU time: on a loaded machine 1.5 s of CPU takes much longer.
    runtime = make_runtime(dsn, schema, shutdown_grace_period=120.0)
    await runtime.start()
    assert runtime.process_pool is not None
    children = runtime.process_pool.pids
    try:
        await await_until(lambda: len(run_rows(runs, schema)) == 2, timeout=MARGIN)
    finally:
        await runtime.stop()
    assert [job(runs, schema, i).state for i in ids] == ["completed", "completed"]
    assert not any(alive(pid) for pid in children)


async def test_stop_past_the_grace_period_kills_running_jobs_and_leaves_them_for_the_lifeline(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    (stuck,) = insert(runs, schema, Forever.new({}))
    runtime = make_runtime(dsn, schema, shutdown_grace_period=0.5)
    await runtime.start()
    assert runtime.process_pool is not None
    children = runtime.process_pool.pids
    try:
        await await_until(lambda: run_rows(runs, schema), timeout=MARGIN)
    finally:
        began = time.monotonic()
        await runtime.stop()
    assert time.monotonic() - began < 0.5 + runtime.shutdown_flush_timeout + 1
    assert job(runs, schema, stuck).state == "executing"
    assert not any(alive(pid) for pid in children)
    # The process killed with its abandoned job was not replaced only to be stopped at once.
    assert runtime.process_pool.replaced == 0
    assert runtime.process_pool.pids == []


async def test_a_row_naming_a_module_never_makes_a_process_import_it(
    dsn: str, schema: str, runs: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("PROCESS_TESTS_MARKER", str(marker))
    names = ["tests.pgqueue.process_marker", "tests.pgqueue.process_marker.Worker", "os.system"]
    statement = sql.SQL(
        "INSERT INTO {} (worker, queue, args) VALUES (%s, 'cpu', '{{}}') RETURNING id"
    ).format(sql.Identifier(schema, "jobs"))
    ids = [runs.execute(statement, (name,)).fetchone()[0] for name in names]  # type: ignore[index]
    async with make_runtime(dsn, schema, processes=1) as runtime:
        assert runtime.process_pool is not None
        await await_until(lambda: all(job(runs, schema, i).state == "retryable" for i in ids), timeout=MARGIN)
        # Handed to a process directly, past the node's own check, a row still imports nothing.
        row = job(runs, schema, ids[0])
        with pytest.raises(WorkerProcessError, match="unknown worker: tests.pgqueue.process_marker"):
            await runtime.process_pool.perform(row)
    for i, name in zip(ids, names, strict=True):
        assert f"unknown worker: {name}" in job(runs, schema, i).errors[0]["error"]
    assert not marker.exists()
    assert "tests.pgqueue.process_marker" not in sys.modules


@pytest.mark.parametrize("bad", [-1, 257, "2", 1.5, True])
def test_processes_must_be_a_count(dsn: str, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"processes must be an integer 0\.\.256, got"):
        Runtime(dsn, processes=bad)


async def test_a_worker_module_that_fails_in_the_process_fails_start_with_its_name(tmp_path: Path) -> None:
    pool = ProcessPool(2, ["tests.pgqueue.no_such_module"])
    with pytest.raises(ConfigError, match="can't import worker module 'tests.pgqueue.no_such_module'"):
        await pool.start()
    assert pool.pids == []


def test_sigterm_to_a_node_with_jobs_in_its_processes_finishes_them_and_leaves_no_process(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    ids = insert(runs, schema, Spin.new({"cpu": 2.0}), Spin.new({"cpu": 2.0}))
    command = [
        sys.executable, "-m", "pgqueue", "start", "--dsn", dsn, "--schema", schema, "--queues", "cpu:2",
        "--workers", WORKERS, "--processes", "2", "--shutdown-grace", "20", "--log-level", "warning",
    ]  # fmt: skip
    node = subprocess.Popen(command, cwd=REPOSITORY, env=os.environ.copy())
    try:
        rows = wait_until(lambda: len(rows := run_rows(runs, schema)) == 2 and rows, timeout=15 + MARGIN)
        children = {row[2] for row in rows}
        assert node.pid not in children
        assert all(child_of(pid) == node.pid for pid in children)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=20 + MARGIN) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert [job(runs, schema, i).state for i in ids] == ["completed", "completed"]
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=MARGIN)


def test_a_node_killed_outright_takes_its_processes_with_it(
    dsn: str, schema: str, runs: psycopg.Connection[Any]
) -> None:
    (stuck,) = insert(runs, schema, Forever.new({}))
    command = [
        sys.executable, "-m", "pgqueue", "start", "--dsn", dsn, "--schema", schema, "--queues", "cpu:1",
        "--workers", WORKERS, "--processes", "1", "--log-level", "warning",
    ]  # fmt: skip
    node = subprocess.Popen(command, cwd=REPOSITORY, env=os.environ.copy())
    try:
        (row,) = wait_until(lambda: run_rows(runs, schema), timeout=15 + MARGIN)
    finally:
        node.kill()
        node.wait()
    # No orphan keeps burning a core once its node is gone; the job waits for the lifeline.
    wait_until(lambda: not alive(row[2]), timeout=MARGIN)
    assert job(runs, schema, stuck).state == "executing"


def child_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_cli_refuses_a_bad_process_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue", "start", "--dsn", "postgresql://x/y", "--processes", "many"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        check=False,
    )
    assert result.returncode == 2
    assert "--processes: expected a whole number of worker processes 0..256, got 'many'" in result.stderr
