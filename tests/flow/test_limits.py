"""Limits in one node: priorities, weights, partitions and their fairness, and bad configuration.

The node runs in the test process; the evidence is the ``flow_marks`` table its worker writes and
the jobs table (see :mod:`tests.flow.workers`).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.runtime import Runtime
from tests.flow.test_limits_processes import max_concurrency, max_in_window
from tests.flow.workers import DSN_VARIABLE, SCHEMA_VARIABLE, Mark
from tests.helpers import await_until

pytestmark = pytest.mark.anyio


class Tenant(pgqueue.Worker, queue="limited", partition_by=["args.tenant"]):
    """A ``Mark`` whose jobs are partitioned by tenant."""

    async def perform(self, job: pgqueue.Job) -> None:
        await Mark().perform(job)


@pytest.fixture
def env(dsn: str, marks: str) -> Callable[..., Any]:
    os.environ[DSN_VARIABLE] = dsn
    os.environ[SCHEMA_VARIABLE] = marks

    @asynccontextmanager
    async def node(config: dict[str, Any]) -> AsyncIterator[Runtime]:
        async with Runtime(
            dsn, schema=marks, queues={"limited": config}, plugins=[], shutdown_grace_period=2.0
        ) as runtime:
            yield runtime

    return node


def rows(conn: psycopg.Connection[Any], query: str, schema: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(query).format(marks=sql.Identifier(schema, "flow_marks"),
                                              jobs=sql.Identifier(schema, "jobs"))).fetchall()  # fmt: skip


async def completed(conn: psycopg.Connection[Any], schema: str, count: int) -> bool:
    return rows(conn, "SELECT count(*) FROM {jobs} WHERE state = 'completed'", schema)[0][0] >= count


async def test_priorities_and_schedule_order_hold_within_a_global_limit(
    env: Any, db: psycopg.Connection[Any], marks: str
) -> None:
    # Given jobs of mixed priorities inserted lowest priority first
    jobs = [Mark.new({"seconds": 0.01, "n": n}, priority=9 - n) for n in range(10)]
    pgqueue.insert_all(db, jobs, schema=marks)

    # When a node with a global limit of 1 runs them
    async with env({"limit": 5, "global_limit": 1}):
        await await_until(lambda: completed(db, marks, 10), timeout=20)

    # Then they ran one at a time, highest priority (0) first
    order = rows(
        db, "SELECT j.priority FROM {marks} m JOIN {jobs} j ON j.id = m.job_id ORDER BY m.started_at", marks
    )
    assert [p for (p,) in order] == list(range(10))
    intervals = rows(db, "SELECT started_at, ended_at FROM {marks}", marks)
    assert max_concurrency([(a, b) for a, b in intervals]) == 1


async def test_a_job_weight_counts_as_several_units_of_the_rate(
    env: Any, db: psycopg.Connection[Any], marks: str
) -> None:
    # Given six jobs of weight 2 and a rate of 4 units per 0.5 s
    pgqueue.insert_all(db, [Mark.new({}, weight=2) for _ in range(6)], schema=marks)

    async with env({"limit": 10, "rate_limit": 4, "rate_period": 0.5}):
        await await_until(lambda: completed(db, marks, 6), timeout=20)

    # Then no half second admitted more than two of them
    starts = rows(db, "SELECT attempted_at, (meta ->> 'weight')::int FROM {jobs}", marks)
    assert max_in_window([(a, w) for a, w in starts], 0.5) == 4
    first, last = min(a for a, _ in starts), max(a for a, _ in starts)
    assert (last - first).total_seconds() >= 1.0  # three windows' worth, not one burst


async def test_a_heavier_job_than_the_rate_runs_alone_in_its_window(
    env: Any, db: psycopg.Connection[Any], marks: str
) -> None:
    pgqueue.insert_all(db, [Mark.new({}, weight=50), Mark.new({})], schema=marks)
    async with env({"limit": 10, "rate_limit": 3, "rate_period": 0.3}):
        await await_until(lambda: completed(db, marks, 2), timeout=20)
    starts = sorted(rows(db, "SELECT attempted_at FROM {jobs}", marks))
    assert (starts[1][0] - starts[0][0]).total_seconds() >= 0.3


async def test_partitions_each_get_the_global_limit_and_a_small_tenant_is_not_starved(
    env: Any, db: psycopg.Connection[Any], marks: str
) -> None:
    # Given a big tenant's 200 jobs inserted before a small tenant's 3
    big = [Tenant.new({"tenant": "big", "seconds": 0.05}) for _ in range(200)]
    small = [Tenant.new({"tenant": "small", "seconds": 0.05}) for _ in range(3)]
    pgqueue.insert_all(db, big + small, schema=marks)

    # When a node runs them with a global limit of 2 per tenant
    async with env({"limit": 10, "global_limit": 2, "partitioned": True}):
        small_done = "SELECT count(*) FROM {marks} WHERE partition = '[\"small\"]' AND ended_at IS NOT NULL"
        await await_until(lambda: rows(db, small_done, marks)[0][0] == 3, timeout=20)
        big_done = rows(db, "SELECT count(*) FROM {marks} WHERE partition = '[\"big\"]'", marks)[0][0]

    # Then the small tenant finished while most of the big one still waited, and neither ever had
    # more than 2 running
    assert big_done < 100
    for tenant in ('["big"]', '["small"]'):
        intervals = rows(db, f"SELECT started_at, ended_at FROM {{marks}} WHERE partition = '{tenant}'"
                         " AND ended_at IS NOT NULL", marks)  # fmt: skip
        assert max_concurrency([(a, b) for a, b in intervals]) <= 2


async def test_jobs_missing_the_partition_arg_share_the_default_partition(
    env: Any, db: psycopg.Connection[Any], marks: str
) -> None:
    # Given jobs whose args lack the tenant, and jobs with no partition key at all
    jobs = [Tenant.new({"seconds": 0.05}) for _ in range(6)] + [Mark.new({"seconds": 0.05}) for _ in range(4)]
    assert {job.meta.get("partition_key") for job in jobs} == {"[null]", None}
    pgqueue.insert_all(db, jobs, schema=marks)

    # When a partitioned node with a global limit of 1 per partition runs them
    async with env({"limit": 10, "global_limit": 1, "partitioned": True}):
        await await_until(lambda: completed(db, marks, 10), timeout=20)

    # Then each group ran as one partition, one job at a time
    for condition in ("partition = '[null]'", "partition IS NULL"):
        intervals = rows(db, f"SELECT started_at, ended_at FROM {{marks}} WHERE {condition}", marks)
        assert len(intervals) in (6, 4)
        assert max_concurrency([(a, b) for a, b in intervals]) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"limit": 0}, "queue 'limited': limit must be an integer 1..10000, got 0"),
        (
            {"limit": 1, "global_limit": 0},
            "queue 'limited': global_limit must be an integer 1..1000000, got 0",
        ),
        ({"limit": 1, "global_limit": -3}, "global_limit must be an integer 1..1000000, got -3"),
        ({"limit": 1, "rate_limit": 0}, "queue 'limited': rate_limit must be an integer"),
        ({"limit": 1, "rate_limit": 5, "rate_period": 0}, "queue 'limited': rate_period must be a number"),
        ({"limit": 1, "rate_period": 1}, "queue 'limited': rate_period needs a rate_limit"),
        ({"limit": 1, "partitioned": True}, "partitioned needs a global_limit or a rate_limit"),
        ({"limit": 1, "global": 3}, "unknown option 'global'"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(dsn: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        Runtime(dsn, queues={"limited": config})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight": 0}, "weight must be an integer 1..1000000, got 0"),
        ({"weight": 1.5}, "weight must be an integer 1..1000000, got 1.5"),
        ({"partition": ""}, "partition must be a string of 1..200 characters"),
    ],
)
def test_bad_weight_or_partition_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        Mark.new({}, **options)


def test_a_bad_partition_by_is_refused_when_the_worker_is_defined() -> None:
    with pytest.raises(pgqueue.ConfigError, match=re.escape("partition_by entries must be 'worker'")):

        class Bad(pgqueue.Worker, partition_by=["tenant"]):
            def perform(self, job: pgqueue.Job) -> None:
                pass
