"""The claim, the pruner, the stager and the lifeline keep their index-ordered plans on a jobs
table that has no statistics (autovacuum disabled, never analyzed), with a backlog big enough
that the planner, left to its guesses, reads the whole backlog for every claim.

The plans inside pgqueue_claim and pgqueue_prunable are read with auto_explain, which reports the
plans of nested statements; auto_explain is a module shipped with the PostgreSQL server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgqueue.executor import fetch_params, fetch_result
from pgqueue.store import queries_for
from tests.helpers import explaining

AVAILABLE = 200_000  # enough for a vacuumed, unanalyzed table to flip the inline claim's plan
FINISHED = 100_000
DUE = 20_000
ORPHANED = 20_000
PRODUCER = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def unanalyzed(dsn: str, schema: str) -> str:
    """A jobs table with a large backlog in every state the background statements read, vacuumed
    (so the planner knows the table's size, as after autovacuum's insert-triggered vacuum) but never
    analyzed: the planner has to guess every selectivity."""
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(jobs))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, worker, args, priority, scheduled_at)"
                " SELECT 'default', 'W', '{{}}', g %% 10, now() - make_interval(secs => g %% 977)"
                " FROM generate_series(1, %(n)s) AS g"
            ).format(jobs),
            {"n": AVAILABLE},
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, worker, args, state, attempt, completed_at)"
                " SELECT 'default', 'W', '{{}}', 'completed', 1, now() - interval '2 days'"
                " FROM generate_series(1, %(n)s)"
            ).format(jobs),
            {"n": FINISHED},
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, worker, args, state, scheduled_at)"
                " SELECT 'default', 'W', '{{}}', 'scheduled', now() - interval '1 hour'"
                " FROM generate_series(1, %(n)s)"
            ).format(jobs),
            {"n": DUE},
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, worker, args, state, attempt, attempted_at, attempted_by)"
                " SELECT 'default', 'W', '{{}}', 'executing', 1, now() - interval '1 hour',"
                " ARRAY['gone', %(producer)s] FROM generate_series(1, %(n)s)"
            ).format(jobs),
            {"n": ORPHANED, "producer": PRODUCER},
        )
        conn.execute(sql.SQL("VACUUM {}").format(jobs))
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE schemaname = %s AND tablename = 'jobs'", [schema]
        ).fetchone()
        assert analyzed == (0,)
    return schema


@pytest.fixture
def explained(dsn: str, unanalyzed: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """A connection whose statements, nested ones included, report their plans as notices."""
    with explaining(dsn) as explaining_conn:
        yield explaining_conn


def _actual_rows(line: str) -> int:
    """The rows a plan node returned, from ``(actual … rows=N loops=1)`` (PostgreSQL 18 writes N.00)."""
    found = re.search(r"actual [^)]*rows=(\d+)(?:\.\d+)? loops=1\)", line)
    assert found, line
    return int(found[1])


def nested_plan(plans: list[str], marker: str) -> str:
    matching = [p for p in plans if marker in p and "Function Scan" not in p]
    assert len(matching) == 1, plans
    return matching[0]


def test_claim_walks_the_fetch_index_in_order_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], unanalyzed: str
) -> None:
    # The statement the fetch ran before pgqueue_claim: proof that this backlog flips the planner.
    conn, plans = explained
    jobs = sql.Identifier(unanalyzed, "jobs")
    rows = conn.execute(
        sql.SQL(
            "EXPLAIN SELECT id FROM {} WHERE state = 'available' AND queue = 'default'"
            " ORDER BY priority, scheduled_at, id LIMIT 100 FOR UPDATE SKIP LOCKED"
        ).format(jobs)
    ).fetchall()
    plan = "\n".join(r[0] for r in rows)
    assert "Bitmap Heap Scan" in plan, plan
    assert "Sort" in plan, plan
    plans.clear()

    params = fetch_params([], queue="default", demand=100, node="n", producer=PRODUCER)

    acked, jobs = fetch_result(conn.execute(queries_for(unanalyzed).fetch_jobs, params).fetchall())

    plan = nested_plan(plans, "FOR UPDATE SKIP LOCKED")
    assert "Index Scan using jobs_fetch_idx" in plan, plan
    assert "Sort" not in plan, plan
    assert "Bitmap" not in plan, plan
    # Every row it touched was one it claimed: the walk stopped after `demand` rows.
    assert _actual_rows(plan.split("Index Scan using jobs_fetch_idx")[1].splitlines()[0]) == 100, plan
    assert acked == 0
    expected = conn.execute(
        sql.SQL(
            "SELECT id FROM {} WHERE state = 'executing' AND attempted_by[1] = 'n'"
            " ORDER BY priority, scheduled_at, id"
        ).format(sql.Identifier(unanalyzed, "jobs"))
    ).fetchall()
    assert [j.id for j in jobs] == [r[0] for r in expected]
    first = conn.execute(
        sql.SQL("SELECT min(priority) FROM {} WHERE state = 'available'").format(
            sql.Identifier(unanalyzed, "jobs")
        )
    ).fetchone()
    assert first is not None
    assert all(j.priority <= first[0] for j in jobs)


def test_concurrent_claims_skip_each_others_rows(dsn: str, unanalyzed: str) -> None:
    statement = queries_for(unanalyzed).fetch_jobs
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        _, held = fetch_result(
            first.execute(
                statement, fetch_params([], queue="default", demand=50, node="a", producer=PRODUCER)
            ).fetchall()
        )
        _, other = fetch_result(
            second.execute(
                statement, fetch_params([], queue="default", demand=50, node="b", producer=PRODUCER)
            ).fetchall()
        )
        second.commit()
        first.commit()
    assert len(held) == 50
    assert len(other) == 50
    assert not {j.id for j in held} & {j.id for j in other}
    # The second claim took the next 50 in order, not some arbitrary rows past the locked ones.
    assert max(j.priority for j in held) <= min(j.priority for j in other)


def test_pruner_reads_each_finished_index_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], unanalyzed: str
) -> None:
    conn, plans = explained

    deleted = conn.execute(queries_for(unanalyzed).prune_jobs, {"max_age": 60, "limit": 1000}).fetchall()

    assert len(deleted) == 1000
    assert {r[2] for r in deleted} == {"completed"}
    plan = nested_plan(plans, "completed_at <")
    assert "Index Scan using jobs_completed_idx" in plan, plan
    assert "Bitmap" not in plan, plan
    assert "Seq Scan" not in plan, plan


def test_stager_and_lifeline_walk_their_indexes_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], unanalyzed: str
) -> None:
    # The inline statements they ran before 0007 flipped to a bitmap scan and a sort of every due
    # row once their LIMIT (5000 by default) exceeded the planner's guess.
    conn, plans = explained
    queries = queries_for(unanalyzed)
    for limit in (1, 5000):
        plans.clear()
        staged = conn.execute(
            queries.stage_jobs, {"until": None, "queue": None, "limit": limit, "channel": "c", "notify": True}
        ).fetchall()
        rescued = conn.execute(
            queries.rescue_jobs, {"window": 60, "rescue_after": 86_400, "limit": limit, "channel": "c"}
        ).fetchall()
        conn.rollback()

        assert len(staged) == limit
        assert len(rescued) == limit
        for index, marker in (("jobs_stage_idx", "retryable"), ("jobs_executing_idx", "heartbeat_window")):
            plan = nested_plan(plans, marker)
            assert f"Index Scan using {index}" in plan, plan
            assert "Sort" not in plan, plan
            assert "Bitmap" not in plan, plan
            assert "Seq Scan on jobs" not in plan, plan
            scan = plan.split(f"Index Scan using {index}")[1].splitlines()[0]
            assert _actual_rows(scan) == limit, plan
