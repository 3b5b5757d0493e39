"""The jobs table the cost curve (``benchmarks.cost_curve``) measures: its schema, and backlogs
built in SQL, vacuumed but never analyzed, with autovacuum disabled on the table.

Every build ends with a ``CHECKPOINT``: a 10-million-job build writes about 2.5 GB (table, indexes,
WAL) in two minutes, and without it the drain measured next pays for that write-back (a checkpoint
triggered mid-drain, the OS flushing the build's dirty pages, a full-page image in the WAL for every
page first touched after it) instead of for the claim at that backlog size.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from pgqueue.migrate import migrate

SCHEMA = "bench_cost"
QUEUE = "bench_cost"
WORKERS = "benchmarks.cpu_worker"
BESIDE = 20_000  # waiting jobs beside a completed backlog
PRODUCER = "00000000-0000-0000-0000-000000000000"
JOBS = sql.Identifier(SCHEMA, "jobs")


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA)
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(JOBS))


def fill(dsn: str, *, available: int, completed: int = 0, worker: str = "bench.AsyncNoop") -> float:
    """Insert the backlog in SQL, vacuum it without analyzing, checkpoint; seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if completed:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (queue, worker, args, state, attempt, attempted_at, completed_at)"
                    " SELECT %s, %s, '{{}}', 'completed', 1, now() - interval '2 days',"
                    " now() - interval '2 days' FROM generate_series(1, %s)"
                ).format(JOBS),
                (QUEUE, worker, completed),
            )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, worker, args, priority)"
                " SELECT %s, %s, jsonb_build_object('seq', g), 0 FROM generate_series(1, %s) AS g"
            ).format(JOBS),
            (QUEUE, worker, available),
        )
        conn.execute(sql.SQL("VACUUM {}").format(JOBS))
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def analyze(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(JOBS))
        conn.execute("CHECKPOINT")


def sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", [f"{SCHEMA}.jobs"] * 2
    )
    values = row.fetchone()
    assert values is not None
    return {"table_bytes": int(values[0]), "index_bytes": int(values[1])}


def fetch_index_reads(conn: psycopg.Connection[Any]) -> int:
    """Index entries the fetch index has returned so far (cumulative statistics, flushed by each
    backend at the end of a transaction at most once a second, and when it disconnects)."""
    row = conn.execute(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelid = %s::regclass",
        [f"{SCHEMA}.jobs_fetch_idx"],
    ).fetchone()
    assert row is not None
    return int(row[0])
