"""Batches across real processes: nodes killed with SIGKILL while a batch drains, callbacks exactly once.

The callbacks are inserted by the ack statement that finishes the last member (or the first
discarded one), under the batch row's lock, in the transaction that records the acks: a node
killed mid-batch either committed that statement or did not, and its in-flight members are rescued
and acked once more by another node. Whatever the storm, each callback job exists exactly once and
the batch's counts equal its members' states.
"""

from __future__ import annotations

import psycopg
import pytest

import pgqueue
from chaos.database import Probe
from tests.helpers import wait_until
from tests.system import test_processes
from tests.system.test_processes import Launch, Node, prepare
from tests.system.workers import Record, Sleep

pytestmark = [pytest.mark.system, pytest.mark.slow]

# The process fixtures of the crash tests: `launch` starts nodes (killed at the end), `probe` reads.
launch = test_processes.launch
probe = test_processes.probe

MEMBERS = 600
KILLS = 4


def test_sigkilled_nodes_never_fire_a_batch_callback_twice_or_never(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # Given a batch of 600 short jobs with a callback per condition, and two nodes draining it
    prepare(dsn, schema, [])
    with psycopg.connect(dsn) as conn:
        batch = pgqueue.insert_batch(
            conn,
            [Sleep.new({"seconds": 0.02, "rescued_seconds": 0.0}) for _ in range(MEMBERS)],
            on_completed=Record.new({"callback": "completed"}),
            on_finished=Record.new({"callback": "finished"}),
            on_discarded=Record.new({"callback": "discarded"}),
            schema=schema,
        )
    nodes: list[Node] = [launch(dsn, schema, "node-a"), launch(dsn, schema, "node-b")]

    # When a node is killed with SIGKILL four times while the batch drains, and restarted each time
    for kill in range(KILLS):
        reached = (kill + 1) * MEMBERS // (KILLS + 2)
        wait_until(lambda at=reached: probe.count("completed") >= at, timeout=60, interval=0.05)
        victim = nodes[kill % 2]
        victim.kill()
        nodes[kill % 2] = launch(dsn, schema, f"{victim.name}-{kill}")

    # Then the batch finishes with every member completed
    def finished() -> pgqueue.BatchProgress | None:
        with psycopg.connect(dsn) as conn:
            progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
        return progress if progress.finished else None

    progress = wait_until(finished, timeout=120, interval=0.1, message=str(probe.states()))
    assert (progress.total, progress.completed, progress.discarded, progress.cancelled) == (
        MEMBERS,
        MEMBERS,
        0,
        0,
    )
    members = probe.rows(
        "SELECT count(*) FROM {s}.jobs WHERE batch_id = %s AND state = 'completed'", [batch.id]
    )
    assert members[0][0] == MEMBERS

    # And each of its callbacks was inserted exactly once (none for discarded), and runs
    def callbacks() -> list[tuple[str, str]]:
        rows = probe.rows(
            "SELECT meta -> 'batch' ->> 'event', state::text FROM {s}.jobs WHERE meta ? 'batch' ORDER BY id"
        )
        return [(str(event), str(state)) for event, state in rows]

    wait_until(lambda: all(state == "completed" for _, state in callbacks()), timeout=30, interval=0.1)
    assert callbacks() == [("completed", "completed"), ("finished", "completed")]
    killed = probe.value(
        "SELECT count(*) FROM {s}.executions e JOIN {s}.jobs j ON j.id = e.job_id WHERE j.meta ? 'rescued'"
    )
    assert killed > 0, "no member was in flight on a killed node: the storm proved nothing"
    for node in nodes:
        node.kill()
