"""Crash safety with real processes: ``python -m pgqueue start`` nodes, killed, cut off and stopped.

Every node runs the workers of :mod:`tests.system.workers`, which record each execution in the
test schema's ``executions`` table; the jobs table and that record are the only evidence the tests
read. Short heartbeat and rescue windows keep the waits short; every wait polls the database
against a deadline.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import pgqueue
from chaos.database import Probe, with_application_name
from pgqueue import migrate as migrations
from pgqueue.localdb import EmbeddedServer, start_embedded
from pgqueue.plugins.lifeline import Lifeline
from tests.helpers import wait_until
from tests.system.workers import DSN_VARIABLE, EXECUTIONS_DDL, SCHEMA_VARIABLE, Record, Sleep

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
JOBS = 5_000
HEARTBEAT_INTERVAL = 0.5
RESCUE_WINDOW = 2.0
#: how often the leader's lifeline looks for orphans (the CLI keeps the plugin's default)
LIFELINE_INTERVAL = Lifeline().interval
#: for the outage tests: far longer than the outages, so a live node's jobs must never be rescued
OUTAGE_RESCUE_WINDOW = 5.0
#: allowance for process start-up, a lifeline round's own work and polling
MARGIN = 3.0


@dataclass
class Node:
    """One ``python -m pgqueue start`` process and the file its stderr goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float) -> int:
        """SIGTERM, then the exit status (within ``timeout`` seconds, or the test fails)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


Launch = Callable[..., Node]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start runtime nodes; whatever is still running when the test ends is killed."""
    started: list[Node] = []

    def start(
        dsn: str,
        schema: str,
        name: str,
        *,
        queues: str = "default:10",
        grace: float = 2.0,
        rescue_window: float = RESCUE_WINDOW,
        direct_dsn: str | None = None,
    ) -> Node:
        log = tmp_path / f"{name}.log"
        env = {
            **os.environ,
            DSN_VARIABLE: dsn,
            SCHEMA_VARIABLE: schema,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        }
        env.pop("DATABASE_URL", None)
        command = [
            sys.executable, "-m", "pgqueue", "start",
            "--dsn", dsn,
            "--schema", schema,
            "--queues", queues,
            "--workers", "tests.system.workers",
            "--node", name,
            "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
            "--rescue-window", str(rescue_window),
            "--shutdown-grace", str(grace),
            "--log-level", "warning",
            *(["--direct-dsn", direct_dsn] if direct_dsn else []),
        ]  # fmt: skip
        with log.open("wb") as stderr:
            process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stderr=stderr)
        node = Node(name, process, log)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            if node.alive():
                node.kill()


def wait_all_completed(probe: Probe, total: int) -> None:
    def done() -> bool:
        return probe.count("completed") == total

    wait_until(done, timeout=60, interval=0.1, message=str(probe.states()))


def prepare(dsn: str, schema: str, jobs: list[pgqueue.NewJob]) -> list[int]:
    """Create the ``executions`` table in the (migrated) schema and insert ``jobs``; their ids."""
    with psycopg.connect(dsn) as conn:
        conn.execute(EXECUTIONS_DDL.format(sql.Identifier(schema)))
        return [job.id for job in pgqueue.insert_all(conn, jobs, schema=schema)]


def insert_one(dsn: str, schema: str, job: pgqueue.NewJob) -> int:
    with psycopg.connect(dsn) as conn:
        return pgqueue.insert(conn, job, schema=schema).id


def assert_each_ran_once(probe: Probe, total: int) -> dict[int, list[tuple[int, str, int]]]:
    """Exactly ``total`` jobs were executed, none of them twice; returns the executions."""
    executions = probe.executions_by_job()
    assert len(executions) == total
    assert {job: runs for job, runs in executions.items() if len(runs) != 1} == {}
    return executions


def assert_clean_exit(node: Node, *, timeout: float = 10.0) -> None:
    """SIGTERM ends the node with status 0, and nothing it logged was a traceback."""
    assert node.stop(timeout) == 0, node.output()
    assert "Traceback" not in node.output(), node.output()


@pytest.fixture
def probe(dsn: str, schema: str) -> Iterator[Probe]:
    reader = Probe(dsn, schema)
    yield reader
    reader.close()


def test_two_nodes_complete_every_job_exactly_once(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # Given 5,000 jobs waiting
    prepare(dsn, schema, [Record.new({}) for _ in range(JOBS)])

    # When two nodes drain the queue together
    nodes = [launch(dsn, schema, "node-a"), launch(dsn, schema, "node-b")]
    wait_all_completed(probe, JOBS)

    # Then every job completed, and ran exactly once, on both nodes between them
    assert probe.states() == {"completed": JOBS}
    executions = assert_each_ran_once(probe, JOBS)
    assert {runs[0][1] for runs in executions.values()} == {"node-a", "node-b"}
    for node in nodes:
        assert_clean_exit(node)


@pytest.mark.parametrize("killed", ["follower", "leader"])
def test_killed_node_is_rescued_in_time_and_only_its_in_flight_jobs_run_twice(
    dsn: str, schema: str, probe: Probe, launch: Launch, killed: str
) -> None:
    # Given two nodes draining 5,000 jobs
    prepare(dsn, schema, [Record.new({}) for _ in range(JOBS)])
    nodes = {
        name: launch(with_application_name(dsn, f"test-{name}"), schema, name)
        for name in ("node-a", "node-b")
    }
    # Every node runs the lifeline: a dead leader's orphans don't wait for its lease to expire
    # (15 s here) and for a new leader to be elected.
    leader = wait_until(
        lambda: probe.rows("SELECT node FROM {s}.pgqueue_leaders WHERE expires_at > now()"), timeout=20
    )[0][0]
    victim = nodes[leader] if killed == "leader" else next(n for name, n in nodes.items() if name != leader)
    survivor = next(node for node in nodes.values() if node is not victim)
    wait_until(
        lambda: probe.executions() >= 300 and probe.executing_on(victim.name),
        timeout=30,
        message="the victim never got going",
    )

    # When the follower (or the leader) is killed mid-run
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    # PostgreSQL finishes a statement it received even if its client died (the victim's last acks
    # may still land): what the victim holds is known once its sessions are gone.
    wait_until(
        lambda: (
            not probe.value(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (f"test-{victim.name}",)
            )
        ),
        timeout=10,
        message="the victim's sessions outlived it",
    )
    held = set(probe.executing_on(victim.name))

    # Then its executing jobs are rescued within the rescue window plus one lifeline round
    deadline = RESCUE_WINDOW + LIFELINE_INTERVAL + MARGIN
    wait_until(lambda: not probe.executing_on(victim.name), timeout=deadline + 5, interval=0.05)
    rescued_after = time.monotonic() - killed_at
    assert rescued_after <= deadline, f"rescued after {rescued_after:.1f}s, allowed {deadline:.1f}s"
    # On a busy machine the survivor's lifeline may rescue some of them before the victim's
    # sessions are seen gone: those were in flight too (only the victim died, so only its jobs
    # can carry the rescue mark).
    rescued = {int(row[0]) for row in probe.rows("SELECT id FROM {s}.jobs WHERE meta ? 'rescued'")}
    in_flight = held | rescued
    assert in_flight, "the victim held no jobs when it died; the test proves nothing"

    # And every job completes; the only jobs run twice were in flight on the killed node
    wait_all_completed(probe, JOBS)
    assert probe.states() == {"completed": JOBS}
    executions = probe.executions_by_job()
    assert len(executions) == JOBS
    twice = {job for job, runs in executions.items() if len(runs) > 1}
    assert twice <= in_flight
    for job in twice:
        assert victim.pid in {pid for _attempt, _node, pid in executions[job]}, executions[job]
    finished = probe.rows(
        "SELECT id, attempt, attempted_by[1], (meta ->> 'rescued')::int FROM {s}.jobs WHERE id = ANY(%s)",
        (list(in_flight),),
    )
    # Each was rescued and finished by the survivor, unless the victim's last ack batch was already
    # on its way: PostgreSQL finishes a statement it received even if the client dies meanwhile.
    outcomes = {(attempt, node, rescued) for _id, attempt, node, rescued in finished}
    assert outcomes <= {(2, survivor.name, 1), (1, victim.name, None)}, outcomes
    assert (2, survivor.name, 1) in outcomes
    assert_clean_exit(survivor)


@pytest.fixture
def embedded() -> Iterator[EmbeddedServer]:
    """A private PostgreSQL this test may restart (never the shared one)."""
    server = start_embedded()
    try:
        yield server
    finally:
        server.stop()


def test_node_recovers_from_a_postgres_restart_and_keeps_picking_up_jobs(
    embedded: EmbeddedServer, launch: Launch
) -> None:
    # Given a node draining jobs from a private server
    schema = "queue"
    total = 3_000
    with psycopg.connect(embedded.dsn) as conn:
        migrations.migrate(conn, schema)
    prepare(embedded.dsn, schema, [Record.new({}) for _ in range(total)])
    probe = Probe(embedded.dsn, schema)
    try:
        node = launch(embedded.dsn, schema, "node-a", rescue_window=OUTAGE_RESCUE_WINDOW)
        wait_until(lambda: probe.executions() >= 300, timeout=30, interval=0.02)

        # When the server restarts under it
        before = probe.count("completed")
        embedded.pg_ctl("restart", "-m", "fast")

        # Then the node recovers on its own and finishes the rest, each job run once: a blip
        # shorter than the rescue window must not hand a live node's jobs to the lifeline
        assert before < total, "the queue drained before the restart; the test proves nothing"
        wait_all_completed(probe, total)
        assert node.alive(), node.output()
        assert probe.states() == {"completed": total}
        assert_each_ran_once(probe, total)

        # And a job inserted afterwards is picked up promptly
        late = insert_one(embedded.dsn, schema, Record.new({}))
        wait_until(
            lambda: probe.value("SELECT state::text FROM {s}.jobs WHERE id = %s", (late,)) == "completed",
            timeout=5,
            interval=0.05,
        )
        assert_clean_exit(node)
    finally:
        probe.close()


def test_node_recovers_when_every_connection_it_has_is_terminated(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # Given a node whose every connection (pool, listener, workers) carries one application name
    application = f"pgqueue-system-{schema}"
    node_dsn = psycopg.conninfo.make_conninfo(dsn, application_name=application)
    total = 3_000
    prepare(dsn, schema, [Record.new({}) for _ in range(total)])
    node = launch(node_dsn, schema, "node-a", rescue_window=OUTAGE_RESCUE_WINDOW)

    # When all its backends are terminated, three times while it drains the queue
    for progress in (400, 1_100, 1_800):
        wait_until(functools.partial(probe.has_executed, progress), timeout=30, interval=0.02)
        terminated = probe.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database() AND pid <> pg_backend_pid()",
            (application,),
        )
        assert terminated, "the node had no connections to terminate"

    # Then it recovers on its own and completes every job, each once
    wait_all_completed(probe, total)
    assert node.alive(), node.output()
    assert probe.states() == {"completed": total}
    assert_each_ran_once(probe, total)

    # And a job inserted afterwards is picked up promptly
    late = insert_one(dsn, schema, Record.new({}))
    wait_until(
        lambda: probe.value("SELECT state::text FROM {s}.jobs WHERE id = %s", (late,)) == "completed",
        timeout=5,
        interval=0.05,
    )
    assert_clean_exit(node)


def test_sigterm_finishes_short_jobs_and_leaves_a_long_one_for_the_next_node(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # Given a node running five short jobs and one that outlasts the grace period
    grace = 1.0
    short = prepare(dsn, schema, [Sleep.new({"seconds": 0.5}) for _ in range(5)])
    long = insert_one(dsn, schema, Sleep.new({"seconds": 60, "rescued_seconds": 0.1}))
    first = launch(dsn, schema, "node-a", grace=grace)
    wait_until(lambda: len(probe.executing_on("node-a")) == 6, timeout=20)

    # When it is asked to stop
    stopping = time.monotonic()
    status = first.stop(timeout=grace + 10)
    stopped_after = time.monotonic() - stopping

    # Then it exits cleanly within the grace period (plus a margin), the short jobs done ...
    assert status == 0, first.output()
    assert "Traceback" not in first.output(), first.output()
    assert stopped_after <= grace + MARGIN, f"exited after {stopped_after:.1f}s"
    assert probe.executions_by_job() == {job: [(1, "node-a", first.pid)] for job in short}
    assert probe.states() == {"completed": 5, "executing": 1}
    # ... and the long one left executing, with no producer row claiming it any more
    assert probe.value("SELECT attempted_by[1] FROM {s}.jobs WHERE id = %s", (long,)) == "node-a"
    assert probe.value("SELECT count(*) FROM {s}.pgqueue_producers WHERE node = 'node-a'") == 0

    # When another node starts, its lifeline rescues the long job and it completes there
    second = launch(dsn, schema, "node-b", grace=grace)
    wait_until(
        lambda: probe.value("SELECT state::text FROM {s}.jobs WHERE id = %s", (long,)) == "completed",
        timeout=LIFELINE_INTERVAL + 2 * MARGIN,
        interval=0.05,
    )
    assert probe.executions_by_job()[long] == [(2, "node-b", second.pid)]
    assert probe.value("SELECT (meta ->> 'rescued')::int FROM {s}.jobs WHERE id = %s", (long,)) == 1
    assert_clean_exit(second)
