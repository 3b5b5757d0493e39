"""Workflows across real processes: nodes killed with SIGKILL mid-workflow, again and again.

Three ``python -m pgqueue start`` nodes run fan-out/fan-in workflows of sleeping steps while the
test kills one node at a time with SIGKILL and starts a new one in its place. Each step checks,
as it starts, that every job it depends on has completed, and writes any that hasn't to
``early_runs``. At the end every step has completed, none ran early, none ran more often than
its rescues explain, and every dependency was counted exactly once.
"""

from __future__ import annotations

import random

import psycopg
import pytest
from psycopg import sql

import pgqueue
from chaos.database import Probe
from tests.helpers import wait_until
from tests.system import test_processes
from tests.system.test_processes import Launch, Node
from tests.system.workers import EXECUTIONS_DDL, WorkflowStep

pytestmark = [pytest.mark.system, pytest.mark.slow]

# The node launcher and the database probe of the process tests, shared.
launch = test_processes.launch
probe = test_processes.probe

WORKFLOWS = 24
PARTS = 4
#: root, the parts, the join and a final step after the join
STEPS_PER_WORKFLOW = PARTS + 3
KILLS = 6


def _insert_workflows(dsn: str, schema: str) -> None:
    rng = random.Random(7)
    with psycopg.connect(dsn) as conn:
        conn.execute(EXECUTIONS_DDL.format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (job_id bigint, dep_id bigint, dep_state text)").format(
                sql.Identifier(schema, "early_runs")
            )
        )
        for number in range(WORKFLOWS):
            flow = pgqueue.Workflow(f"crash-{number}")

            def step(name: str, deps: list[str], flow: pgqueue.Workflow = flow) -> str:
                return flow.add(name, WorkflowStep.new({"seconds": rng.uniform(0.05, 0.4)}), deps=deps)

            root = step("root", [])
            parts = [step(f"part-{i}", [root]) for i in range(PARTS)]
            join = step("join", parts)
            step("final", [join])
            pgqueue.insert_workflow(conn, flow, schema=schema)


def test_no_step_runs_early_twice_or_never_while_nodes_are_killed(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # Given workflows of sleeping steps, three nodes running them
    _insert_workflows(dsn, schema)
    total = WORKFLOWS * STEPS_PER_WORKFLOW
    nodes: list[Node] = [launch(dsn, schema, f"node-{i}", queues="default:4") for i in range(3)]

    # When one node after another is killed while it runs a step, and replaced
    for kill in range(KILLS):
        names = {node.name for node in nodes}
        busy = wait_until(
            lambda names=names: [  # type: ignore[misc]
                row[0]
                for row in probe.rows("SELECT attempted_by[1] FROM {s}.jobs WHERE state = 'executing'")
                if row[0] in names
            ],
            timeout=30,
            interval=0.02,
            message=f"no node running a step before kill {kill}: {probe.states()}",
        )
        victim = next(node for node in nodes if node.name == busy[0])
        nodes.remove(victim)
        victim.kill()
        nodes.append(launch(dsn, schema, f"node-r{kill}", queues="default:4"))

    # Then every step completes
    wait_until(
        lambda: probe.count("completed") == total, timeout=120, interval=0.1, message=str(probe.states())
    )
    assert probe.states() == {"completed": total}
    # none ran before its dependencies completed
    assert probe.rows("SELECT job_id, dep_id, dep_state FROM {s}.early_runs") == []
    # each ran to completion once, or once more per rescue of a killed attempt
    rescued = {
        int(job_id): int(count)
        for job_id, count in probe.rows(
            "SELECT id, coalesce((meta ->> 'rescued')::int, 0) FROM {s}.jobs WHERE meta ? 'rescued'"
        )
    }
    assert rescued, "no kill landed mid-step: the test proved nothing about rescues"
    executions = probe.executions_by_job()
    assert len(executions) == total
    too_many = {job: len(runs) for job, runs in executions.items() if len(runs) > 1 + rescued.get(job, 0)}
    assert too_many == {}
    # and every dependency was counted exactly once, with nothing left pending
    waits = probe.rows(
        "SELECT count(*), count(*) FILTER (WHERE pending = 0 AND failed_deps = 0) "
        "FROM {s}.pgqueue_workflow_waits"
    )
    assert waits == [(WORKFLOWS * (STEPS_PER_WORKFLOW - 1), WORKFLOWS * (STEPS_PER_WORKFLOW - 1))]
    unresolved = (
        "SELECT count(*) FROM {s}.pgqueue_workflow_deps AS d WHERE NOT EXISTS "
        "(SELECT 1 FROM {s}.pgqueue_workflow_resolved AS r WHERE r.dep_id = d.dep_id)"
    )
    assert probe.value(unresolved) == 0
    for node in nodes:
        node.kill()
