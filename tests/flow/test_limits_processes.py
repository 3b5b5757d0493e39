"""Cluster-wide limits, exact with real processes: four nodes share a global and a rate limit.

The evidence is the database's: each job marks its start and end by the database clock, and the
jobs table holds when each was admitted (``attempted_at``). From those the tests compute the
highest number of jobs that ever ran at once and the most admitted in any one rate period.
"""

from __future__ import annotations

import random
import signal
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from tests.flow.conftest import Launch
from tests.flow.workers import Mark
from tests.helpers import wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]


def max_concurrency(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals that overlap at one instant (an end before a start at the same time)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))  # fmt: skip
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def max_in_window(starts: list[tuple[datetime, int]], period: float) -> int:
    """The most units started in any half-open window of ``period`` seconds."""
    starts = sorted(starts)
    peak = total = 0
    left = 0
    for right, (at, units) in enumerate(starts):
        total += units
        while (at - starts[left][0]).total_seconds() >= period:
            total -= starts[left][1]
            left += 1
        peak = max(peak, total)
        del right
    return peak


def insert(dsn: str, schema: str, jobs: list[pgqueue.NewJob]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        pgqueue.insert_all(conn, jobs, schema=schema)


def finished(dsn: str, schema: str, count: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(
                sql.Identifier(schema, "jobs")
            )
        ).fetchone()
    return bool(row and row[0] >= count)


def evidence(
    dsn: str, schema: str
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, int]], set[str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        marks = conn.execute(
            sql.SQL("SELECT started_at, ended_at, node FROM {} WHERE ended_at IS NOT NULL").format(
                sql.Identifier(schema, "flow_marks")
            )
        ).fetchall()
        starts = conn.execute(
            sql.SQL(
                "SELECT attempted_at, coalesce((meta ->> 'weight')::int, 1) FROM {} "
                "WHERE attempted_at IS NOT NULL"
            ).format(sql.Identifier(schema, "jobs"))
        ).fetchall()
    return [(m[0], m[1]) for m in marks], [(s[0], s[1]) for s in starts], {m[2] for m in marks}


def test_four_processes_never_exceed_the_global_limit_nor_the_rate(
    dsn: str, marks: str, launch: Launch
) -> None:
    # Given four nodes, each allowed 3 at once locally, sharing a global limit of 3 and a rate of
    # 25 units per second, and a backlog whose durations make both limits bind by turns
    config: dict[str, Any] = {"limit": 3, "global_limit": 3, "rate_limit": 25, "rate_period": 1.0}
    rng = random.Random(16)
    jobs = [
        Mark.new({"seconds": rng.choice([0.01, 0.05, 0.2, 0.4])}, meta={"weight": rng.choice([1, 1, 1, 2])})
        for _ in range(90)
    ]
    insert(dsn, marks, jobs)
    for index in range(4):
        launch(f"flow-{index}", config)

    # When they drain it
    wait_until(lambda: finished(dsn, marks, len(jobs)), timeout=60, interval=0.2)

    # Then no instant saw more than 3 jobs running, no second admitted more than 25 units, and
    # the work was shared between the nodes
    intervals, starts, nodes = evidence(dsn, marks)
    assert len(intervals) == len(jobs)
    assert max_concurrency(intervals) <= 3
    assert max_concurrency(intervals) == 3  # the limit was reached, not merely respected
    assert max_in_window(starts, 1.0) <= 25
    assert len(nodes) >= 2


def test_a_killed_node_releases_its_share_through_the_lifeline(dsn: str, marks: str, launch: Launch) -> None:
    # Given a node holding the whole global limit with long jobs
    config: dict[str, Any] = {"limit": 5, "global_limit": 2}
    insert(dsn, marks, [Mark.new({"seconds": 60, "rescued_seconds": 0.5}) for _ in range(2)])
    doomed = launch("doomed", config)

    def started() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(marks, "flow_marks"))
            ).fetchone()
        return int(row[0]) if row else 0

    wait_until(lambda: started() == 2, timeout=30, interval=0.05)
    # and a second node, with short jobs waiting that the limit keeps from running
    insert(dsn, marks, [Mark.new({"seconds": 0.01}) for _ in range(4)])
    launch("survivor", config)
    with psycopg.connect(dsn, autocommit=True) as conn:

        def executing() -> int:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE state = 'executing'").format(
                    sql.Identifier(marks, "jobs")
                )
            ).fetchone()
            return int(row[0]) if row else 0

        assert executing() == 2

        # When the first node dies
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)

        # Then the lifeline rescues its jobs and the survivor runs everything, two at a time
        wait_until(lambda: finished(dsn, marks, 6), timeout=60, interval=0.2)
    intervals, _, nodes = evidence(dsn, marks)
    assert max_concurrency(intervals) <= 2
    assert "survivor" in nodes
