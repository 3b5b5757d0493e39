"""The limited and the partitioned fetch keep their index-ordered, bounded plans on a jobs table
that has no statistics (autovacuum disabled, never analyzed), with a backlog big enough that the
planner, left to its guesses, would read the whole backlog for every claim.

As in ``tests/pgqueue/test_claim_plan.py``, the plans are read with auto_explain (shipped with the
PostgreSQL server), which also reports the plans of the statements inside ``pgqueue_claim`` and
``pgqueue_executing_count``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row

from pgqueue.executor import fetch_params
from pgqueue.producer import RATE_SLOTS
from pgqueue.store import queries_for
from tests.helpers import explaining

LIMITED = "limited"
PARTED = "parted"
AVAILABLE = 200_000  # per queue: enough for a vacuumed, unanalyzed table to flip the inline claim
KEYS = 5
LIMIT = 100  # the global limit of the count's test
LIVE = 150  # executing on another producer: more than the limit
CHURN = 20_000  # claimed and finished since the last vacuum, after LIVE started


@pytest.fixture
def unanalyzed(dsn: str, schema: str) -> str:
    """A large backlog in a limited queue and in a partitioned one (keyed and keyless jobs),
    vacuumed (the planner knows the table's size) but never analyzed."""
    jobs = sql.Identifier(schema, "jobs")
    insert = sql.SQL(
        "INSERT INTO {} (queue, worker, args, meta, priority, scheduled_at)"
        " SELECT %(queue)s, 'W', '{{}}', {}, g %% 10, now() - make_interval(secs => g %% 977)"
        " FROM generate_series(1, %(n)s) AS g"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(jobs))
        conn.execute(insert.format(jobs, sql.SQL("'{}'")), {"queue": LIMITED, "n": AVAILABLE})
        keyed = sql.SQL("jsonb_build_object('partition_key', 'k' || g %% {})").format(sql.Literal(KEYS))
        conn.execute(insert.format(jobs, keyed), {"queue": PARTED, "n": AVAILABLE})
        conn.execute(insert.format(jobs, sql.SQL("'{}'")), {"queue": PARTED, "n": AVAILABLE // 10})
        conn.execute(sql.SQL("VACUUM {}").format(jobs))
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE schemaname = %s AND tablename = 'jobs'", [schema]
        ).fetchone()
        assert analyzed == (0,)
        queries = queries_for(schema)
        for queue in (LIMITED, PARTED):  # the admission rows, as a queue's first fetch creates them
            conn.execute(queries.lock_limits, {"queue": queue})
    return schema


@pytest.fixture
def explained(dsn: str, unanalyzed: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """A connection whose statements, nested ones included, report their plans as notices."""
    with explaining(dsn) as explaining_conn:
        yield explaining_conn


def _params(queue: str, demand: int) -> dict[str, Any]:
    params = fetch_params([], queue=queue, demand=demand, node="n", producer="p-1")
    params.update(
        running=0,
        global_limit=1000,
        rate_limit=None,
        rate_period=None,
        period_us=1_000_000,
        slots=RATE_SLOTS,
    )
    return params


def _claimed(rows: list[tuple[Any, ...]]) -> list[int]:
    assert rows, "the fetch returns at least one row"
    assert rows[0][2] is False, "not contended"
    return [row[3] for row in rows if row[3] is not None]


def _scans(plan: str) -> list[tuple[str, int]]:
    """Every scan of the jobs table in a plan: (its kind and index, the most rows one loop returned)."""
    found = []
    for line in plan.splitlines():
        scan = re.search(r"(Seq Scan|Bitmap Heap Scan|(?:Index|Index Only) Scan using \w+) on jobs\b", line)
        if scan is None:
            continue
        rows = re.search(r"actual [^)]*rows=(\d+)(?:\.\d+)? loops=\d+\)", line)
        found.append((scan[1], int(rows[1]) if rows else 0))
    return found


def _first_in_order(conn: psycopg.Connection[Any], schema: str, queue: str, n: int) -> list[int]:
    rows = conn.execute(
        sql.SQL(
            "SELECT id FROM {} WHERE state = 'available' AND queue = %s"
            " ORDER BY priority, scheduled_at, id LIMIT %s"
        ).format(sql.Identifier(schema, "jobs")),
        (queue, n),
    ).fetchall()
    return [r[0] for r in rows]


def _bitmap_scans(plans: list[str]) -> list[str]:
    return [p for p in plans if re.search(r"Bitmap Heap Scan on jobs\b", p)]


def _claim_plan(plans: list[str]) -> str:
    matching = [p for p in plans if "FOR UPDATE SKIP LOCKED" in p and "claim_queue" in p]
    assert len(matching) == 1, plans
    return matching[0]


@pytest.mark.parametrize("locked", [False, True], ids=["one-statement", "locked"])
def test_limited_fetch_claims_through_the_ordered_walk_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], unanalyzed: str, locked: bool
) -> None:
    conn, plans = explained
    queries = queries_for(unanalyzed)
    # The claim as fetch_limited.sql wrote it inline: this backlog flips it to a bitmap scan and sort.
    rows = conn.execute(
        sql.SQL(
            "EXPLAIN SELECT id FROM {} WHERE state = 'available' AND queue = %s"
            " ORDER BY priority, scheduled_at, id LIMIT 100 FOR UPDATE SKIP LOCKED"
        ).format(sql.Identifier(unanalyzed, "jobs")),
        (LIMITED,),
    ).fetchall()
    inline = "\n".join(r[0] for r in rows)
    assert "Bitmap Heap Scan" in inline, inline
    assert "Sort" in inline, inline
    expected = _first_in_order(conn, unanalyzed, LIMITED, 100)
    conn.rollback()
    plans.clear()

    cursor = conn.cursor(row_factory=tuple_row)
    if locked:  # the producer's locked run: limited_plan.sql, lock_limits.sql, then the fetch
        cursor.execute(queries.limited_plan)
        cursor.execute(queries.lock_limits, {"queue": LIMITED})
    claimed = _claimed(cursor.execute(queries.fetch_limited, _params(LIMITED, 100)).fetchall())
    conn.rollback()

    plan = _claim_plan(plans)
    assert _scans(plan) == [("Index Scan using jobs_fetch_idx", 100)], plan
    assert "Sort" not in plan, plan
    assert _bitmap_scans(plans) == []
    assert claimed == expected


@pytest.fixture
def churned(dsn: str, unanalyzed: str) -> str:
    """The limited queue of ``unanalyzed`` with LIVE jobs executing on producer p-2, then CHURN
    jobs claimed and finished after them: dead entries in the executing index, newer than the live
    ones, as no vacuum has run since."""
    jobs = sql.Identifier(unanalyzed, "jobs")
    claim = sql.SQL(
        "UPDATE {0} SET state = 'executing', attempt = 1, attempted_at = clock_timestamp(),"
        " attempted_by = ARRAY['n', 'p-2']"
        " WHERE id IN (SELECT id FROM {0} WHERE state = 'available' AND queue = %s ORDER BY id LIMIT %s)"
    ).format(jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(claim, (LIMITED, LIVE))
        conn.execute(claim, (LIMITED, CHURN))
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'completed', completed_at = now()"
                " WHERE state = 'executing' AND attempted_by[2] = 'p-2'"
                " AND id NOT IN (SELECT id FROM {} WHERE queue = %s ORDER BY id LIMIT %s)"
            ).format(jobs, jobs),
            (LIMITED, LIVE),
        )
    return unanalyzed


def _buffers(plan: str) -> int:
    """The buffers a plan's top node touched (shared hits and reads)."""
    found = re.search(r"Buffers: shared((?: \w+=\d+)+)", plan)
    assert found is not None, plan
    counts = dict(pair.split("=") for pair in found[1].split())
    return int(counts.get("hit", 0)) + int(counts.get("read", 0))


@pytest.mark.parametrize("locked", [False, True], ids=["one-statement", "locked"])
def test_limited_fetch_counts_executing_jobs_by_an_ordered_walk_stopped_at_the_limit_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], churned: str, locked: bool
) -> None:
    conn, plans = explained
    queries = queries_for(churned)
    conn.execute("SET auto_explain.log_buffers = on")
    conn.commit()
    # The count as fetch_limited.sql wrote it inline: on this table a bitmap scan, which visits the
    # heap for every entry of the executing index, those of the finished jobs included.
    rows = conn.execute(
        sql.SQL(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM (SELECT j.id FROM {} AS j"
            " WHERE j.state = 'executing' AND j.queue = %s AND j.attempted_by[2] IS DISTINCT FROM 'p-1'"
            " ORDER BY j.attempted_at LIMIT %s) AS e"
        ).format(sql.Identifier(churned, "jobs")),
        (LIMITED, LIMIT),
    ).fetchall()
    inline = "\n".join(r[0] for r in rows)
    assert "Bitmap Heap Scan" in inline, inline
    visited = re.search(r"Bitmap Index Scan on jobs_executing_idx .*actual [^)]*rows=(\d+)", inline)
    assert visited is not None, inline
    assert int(visited[1]) >= LIVE + CHURN, inline
    assert _buffers(inline) > CHURN // 100, inline
    conn.rollback()
    plans.clear()

    # When a producer fetches with the global limit already full
    cursor = conn.cursor(row_factory=tuple_row)
    if locked:
        cursor.execute(queries.limited_plan)
        cursor.execute(queries.lock_limits, {"queue": LIMITED})
    params = _params(LIMITED, 10)
    params.update(global_limit=LIMIT)
    rows = cursor.execute(queries.fetch_limited, params).fetchall()
    conn.rollback()

    # Then it claims nothing, held back by the global limit (retry as soon as a job ends)
    assert _claimed(rows) == []
    assert rows[0][1] == 0
    # Having counted the others' jobs by a walk of the executing index, oldest first, that stops
    # at the limit: it never reaches the finished jobs' entries, and no statement of the fetch
    # scans the table by bitmap.
    assert _bitmap_scans(plans) == []
    counts = [p for p in plans if "count_queue" in p and "Query Text" in p]
    assert len(counts) == 1, plans
    assert _scans(counts[0]) == [("Index Scan using jobs_executing_idx", LIMIT)], counts[0]
    assert _buffers(counts[0]) < LIMIT, counts[0]


def test_partitioned_fetch_reads_a_bounded_head_of_each_partition_without_statistics(
    explained: tuple[psycopg.Connection[Any], list[str]], unanalyzed: str
) -> None:
    conn, plans = explained
    queries = queries_for(unanalyzed)
    cursor = conn.cursor(row_factory=tuple_row)
    cursor.execute(queries.limited_plan)
    cursor.execute(queries.lock_limits, {"queue": PARTED})
    plans.clear()

    claimed = _claimed(cursor.execute(queries.fetch_partitioned, _params(PARTED, 100)).fetchall())
    metas = conn.execute(
        sql.SQL("SELECT coalesce(meta ->> 'partition_key', '') FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(unanalyzed, "jobs")
        ),
        (claimed,),
    ).fetchall()
    conn.rollback()

    plan = next(p for p in plans if "keyless AS" in p)
    scans = _scans(plan)
    assert scans, plan
    # Index walks only, none reading more than the head it needs: a keyless look-ahead of at
    # most 1,000 jobs, a partition's share of the demand (plus one), one row per key's descent.
    assert all(kind.startswith("Index") for kind, _ in scans), plan
    assert max(rows for _, rows in scans) <= 1000, plan
    assert ("Index Scan using jobs_fetch_idx", 1000) in scans, plan
    assert any(kind == "Index Scan using jobs_partition_idx" for kind, _ in scans), plan
    # And it shares the demand round by round: every key, and the keyless jobs, get their part.
    assert len(claimed) == 100
    counts = {k: sum(1 for (m,) in metas if m == k) for k in {m for (m,) in metas}}
    assert set(counts) == {"", *(f"k{i}" for i in range(KEYS))}
    assert max(counts.values()) - min(counts.values()) <= 1
