"""The limited fetch as one statement: exact without the separate lock unless an admission races it.

A limited queue's fetch locks the queue's admission row inside the statement and admits only when
the row it locked is the one its snapshot saw (see ``queries/fetch_limited.sql``). These tests run
the statement itself on real connections, one of them held open mid-admission, to pin the case the
producer's fallback exists for.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row

from pgqueue.executor import Ack, fetch_params
from pgqueue.job import JobState
from pgqueue.producer import RATE_SLOTS
from pgqueue.store import Queries, queries_for
from tests.helpers import wait_until

QUEUE = "limited"


def _params(
    demand: int,
    *,
    global_limit: int | None = 2,
    rate_limit: int | None = None,
    producer: str = "p-1",
    running: int = 0,
) -> dict[str, Any]:
    params = fetch_params([], queue=QUEUE, demand=demand, node="test-node", producer=producer)
    params.update(
        running=running,
        global_limit=global_limit,
        rate_limit=rate_limit,
        rate_period=1.0 if rate_limit is not None else None,
        period_us=1_000_000,
        slots=RATE_SLOTS,
    )
    return params


def _fetch(
    conn: psycopg.Connection[Any], queries: Queries, params: dict[str, Any]
) -> tuple[Any, bool, list[int]]:
    """Run fetch_limited.sql alone; (retry_in, contended, ids claimed)."""
    rows = conn.cursor(row_factory=tuple_row).execute(queries.fetch_limited, params).fetchall()
    return rows[0][1], rows[0][2], [row[3] for row in rows if row[3] is not None]


def _fetch_locked(
    conn: psycopg.Connection[Any], queries: Queries, params: dict[str, Any]
) -> tuple[Any, bool, list[int]]:
    """The producer's fallback: lock_limits.sql, then fetch_limited.sql, in one transaction."""
    with conn.transaction():
        conn.execute(queries.lock_limits, {"queue": QUEUE})
        return _fetch(conn, queries, params)


def _admission_version(conn: psycopg.Connection[Any], schema: str) -> str:
    row = conn.execute(
        sql.SQL("SELECT xmin::text FROM {} WHERE queue = %s AND partition_key = ''").format(
            sql.Identifier(schema, "pgqueue_limit_state")
        ),
        (QUEUE,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _executing(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE state = 'executing'").format(sql.Identifier(schema, "jobs"))
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def backlog(dsn: str, schema: str) -> str:
    """Ten available jobs in the ``limited`` queue."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker, queue, args) SELECT 'tests.Noop', %s, jsonb_build_object('n', g) "
                "FROM generate_series(1, 10) AS g"
            ).format(sql.Identifier(schema, "jobs")),
            (QUEUE,),
        )
    return schema


def test_the_first_fetch_of_a_queue_is_contended_until_its_admission_row_exists(
    dsn: str, backlog: str
) -> None:
    queries = queries_for(backlog)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Given a limited queue that was never fetched: it has no admission row yet
        # When the single statement runs
        _, contended, claimed = _fetch(conn, queries, _params(5))
        # Then it admits nothing and asks for the locked run, which creates the row and admits
        assert (contended, claimed, _executing(conn, backlog)) == (True, [], 0)
        _, contended, claimed = _fetch_locked(conn, queries, _params(5))
        assert not contended
        assert len(claimed) == 2  # the global limit
        assert _executing(conn, backlog) == 2


def test_an_uncontended_fetch_admits_in_one_statement_and_writes_the_admission_row(
    dsn: str, backlog: str
) -> None:
    queries = queries_for(backlog)
    with psycopg.connect(dsn, autocommit=True) as conn:
        _fetch_locked(conn, queries, _params(1, global_limit=3))
        before = _admission_version(conn, backlog)

        # When the single statement runs with nobody else admitting (its first job still running)
        retry_in, contended, claimed = _fetch(conn, queries, _params(5, global_limit=3, running=1))

        # Then it admits up to the limit, and the admission wrote a new version of the row
        assert not contended
        assert len(claimed) == 2
        assert _executing(conn, backlog) == 3
        assert retry_in == 0  # jobs left waiting by the global limit: look again as jobs end
        assert _admission_version(conn, backlog) != before

        # And a fetch held back entirely admits nothing and leaves the row as it was
        after = _admission_version(conn, backlog)
        retry_in, contended, claimed = _fetch(conn, queries, _params(5, global_limit=3, running=3))
        assert (contended, claimed, retry_in) == (False, [], 0)
        assert _admission_version(conn, backlog) == after


def test_a_producer_counts_its_own_jobs_and_the_database_counts_the_others(dsn: str, backlog: str) -> None:
    queries = queries_for(backlog)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Given producer p-1 holding the whole global limit of 2
        _, _, claimed = _fetch_locked(conn, queries, _params(5, producer="p-1"))
        assert len(claimed) == 2
        # When another producer fetches, it counts p-1's two executing rows: nothing for it
        _, _, claimed = _fetch(conn, queries, _params(5, producer="p-2"))
        assert claimed == []
        # And p-1, while both its jobs still perform, gets nothing either
        _, _, claimed = _fetch(conn, queries, _params(5, producer="p-1", running=2))
        assert claimed == []
        # But once they have finished (their acks not landed yet: still executing rows), p-1 may
        # start two more: what runs at once never exceeds the limit
        _, _, claimed = _fetch(conn, queries, _params(5, producer="p-1", running=0))
        assert len(claimed) == 2
        assert _executing(conn, backlog) == 4


def test_jobs_a_fetch_acks_no_longer_count_against_the_limit_it_admits_to(dsn: str, backlog: str) -> None:
    queries = queries_for(backlog)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Given producer p-2 holding the whole global limit of 2
        _, _, held = _fetch_locked(conn, queries, _params(5, producer="p-2"))
        assert len(held) == 2
        # When a fetch by p-1 acks one of them in the same statement (its snapshot still sees
        # the job executing)
        params = _params(5, producer="p-1")
        params["acks"] = fetch_params([Ack(held[0], 1, JobState.COMPLETED)])["acks"]
        _, contended, claimed = _fetch(conn, queries, params)
        # Then it counts only the other one, and admits one job in its place
        assert (contended, len(claimed)) == (False, 1)
        assert _executing(conn, backlog) == 2


def test_a_fetch_whose_snapshot_missed_an_admission_admits_nothing(dsn: str, backlog: str) -> None:
    queries = queries_for(backlog)
    with (
        psycopg.connect(dsn, autocommit=True) as first,
        psycopg.connect(dsn, autocommit=True) as second,
        psycopg.connect(dsn, autocommit=True) as observer,
    ):
        _fetch_locked(first, queries, _params(0))  # the admission row exists
        # Given a node mid-admission: it has claimed the whole global limit, not yet committed
        first.execute("BEGIN")
        _, contended, claimed = _fetch(first, queries, _params(5))
        assert (contended, len(claimed)) == (False, 2)

        # When another node's fetch starts now (its snapshot sees no job executing) and waits for
        # the admission row
        outcome: dict[str, Any] = {}
        pid = second.info.backend_pid

        def fetch() -> None:
            outcome["result"] = _fetch(second, queries, _params(5, producer="p-2"))

        racer = threading.Thread(target=fetch)
        racer.start()
        waiting = sql.SQL("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s")
        wait_until(lambda: (observer.execute(waiting, (pid,)).fetchone() or (False,))[0], timeout=10)
        first.execute("COMMIT")
        racer.join(timeout=10)
        assert not racer.is_alive()

        # Then it admitted nothing (counting from its snapshot it would have admitted two more)
        _, contended, claimed = outcome["result"]
        assert (contended, claimed) == (True, [])
        assert _executing(observer, backlog) == 2
        # And the locked run sees the first node's admissions: the limit is reached
        retry_in, contended, claimed = _fetch_locked(second, queries, _params(5, producer="p-2"))
        assert (contended, claimed, retry_in) == (False, [], 0)
        assert _executing(observer, backlog) == 2


def test_a_rate_limited_fetch_whose_snapshot_missed_an_admission_admits_nothing(
    dsn: str, backlog: str
) -> None:
    queries = queries_for(backlog)
    params = _params(5, global_limit=None, rate_limit=3)
    with (
        psycopg.connect(dsn, autocommit=True) as first,
        psycopg.connect(dsn, autocommit=True) as second,
        psycopg.connect(dsn, autocommit=True) as observer,
    ):
        _fetch_locked(first, queries, _params(0, global_limit=None, rate_limit=3))
        # Given a node mid-admission that takes the whole rate window
        first.execute("BEGIN")
        _, contended, claimed = _fetch(first, queries, params)
        assert (contended, len(claimed)) == (False, 3)

        # When another node's fetch waits for the admission row, then the first commits
        outcome: dict[str, Any] = {}
        pid = second.info.backend_pid
        racer = threading.Thread(target=lambda: outcome.update(result=_fetch(second, queries, params)))
        racer.start()
        waiting = sql.SQL("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s")
        wait_until(lambda: (observer.execute(waiting, (pid,)).fetchone() or (False,))[0], timeout=10)
        first.execute("COMMIT")
        racer.join(timeout=10)
        assert not racer.is_alive()

        # Then the second admitted nothing, and the locked run finds the window full
        _, contended, claimed = outcome["result"]
        assert (contended, claimed) == (True, [])
        retry_in, contended, claimed = _fetch_locked(second, queries, params)
        assert (contended, claimed) == (False, [])
        assert retry_in is not None  # seconds until the window frees a unit
        assert retry_in > 0
        assert _executing(observer, backlog) == 3
