"""A real ``python -m pgqueue start`` node among poison: the reproductions of the hostile-input review.

The node's session is in America/New_York. Its queue ``poison`` holds a worker failing with a NUL
in its message, one with a lone surrogate, one whose backoff is 2**50 s, a row whose args nest
2,000 deep and one scheduled in year 1 UTC (1 BC in New York), next to ordinary jobs; queue
``other`` holds one more ordinary job. Before, any one of the first three stopped every queue of the
node and SIGTERM then hung; the undecodable rows stranded their whole claimed batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from chaos.database import Probe
from chaos.processes import fleet
from chaos.workers import EXECUTIONS_DDL, Busy, HugeBackoff, NulError, SurrogateError
from tests.helpers import wait_until

pytestmark = [pytest.mark.system, pytest.mark.slow]

GRACE = 1.0
#: Runtime's default shutdown_flush_timeout
FLUSH_DEADLINE = 5.0
#: the interpreter's own exit, on a busy machine
EXIT_MARGIN = 3.0


def insert_raw(conn: psycopg.Connection[Any], schema: str, args: str, scheduled_at: str) -> int:
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (worker, queue, args, scheduled_at)"
            " VALUES (%s, 'poison', %s::jsonb, %s::timestamptz) RETURNING id"
        ).format(sql.Identifier(schema, "jobs")),
        (Busy.name, args, scheduled_at),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_node_among_poison_runs_everything_else_records_each_error_and_stops_on_time(
    dsn: str, schema: str, tmp_path: Path
) -> None:
    # Given poison and ordinary jobs in one queue, and an ordinary job in another
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EXECUTIONS_DDL.format(sql.Identifier(schema)))
        poison = [
            pgqueue.insert(conn, worker.new({}, queue="poison"), schema=schema).id
            for worker in (NulError, SurrogateError, HugeBackoff)
        ]
        undecodable = [
            insert_raw(conn, schema, '{"deep": ' + "[" * 2000 + "]" * 2000 + "}", "now"),
            insert_raw(conn, schema, "{}", "0001-01-01 00:00:00+00"),
        ]
        ordinary = [
            pgqueue.insert(conn, Busy.new({}, queue=queue), schema=schema).id
            for queue in ("poison", "poison", "poison", "other")
        ]

    node_dsn = psycopg.conninfo.make_conninfo(dsn, options="-c timezone=America/New_York")
    with Probe(dsn, schema) as probe, fleet(tmp_path) as processes:
        # When a node runs both queues
        node = processes.pgqueue(
            "poisoned", node_dsn, schema, queues="poison:10,other:10", shutdown_grace=GRACE
        )

        def settled() -> bool:
            rows = probe.rows(
                "SELECT id, state::text FROM {s}.jobs WHERE id = ANY(%s)", (poison + undecodable + ordinary,)
            )
            states = dict(rows)
            return (
                all(states[i] == "completed" for i in ordinary)
                and all(states[i] == "retryable" for i in poison)
                and all(states[i] == "discarded" for i in undecodable)
            )

        # Then the ordinary jobs complete, each once, and each poison job ends with its error
        wait_until(settled, timeout=60, interval=0.1, message=str(probe.states()))
        assert {job: len(runs) for job, runs in probe.executions_by_job().items()} == dict.fromkeys(
            ordinary, 1
        )
        errors = dict(
            probe.rows(
                "SELECT id, errors -> -1 ->> 'error' FROM {s}.jobs WHERE id = ANY(%s)",
                (poison + undecodable,),
            )
        )
        nul, surrogate, backoff = (errors[i] for i in poison)
        assert "unexpected byte in payload: \\x00" in nul
        assert "can't open file b'\\xff': \\udcff" in surrogate
        assert backoff.startswith("RuntimeError: upstream down")
        deep, year_one = (errors[i] for i in undecodable)
        assert "could not decode this job's row (JSONDecodeError: depth limit exceeded" in deep
        assert "could not decode this job's row (DataError: timestamp too small" in year_one
        due = probe.value(
            "SELECT scheduled_at - now() < interval '1 minute' FROM {s}.jobs WHERE id = %s", (poison[2],)
        )
        assert due, "the default backoff replaced 2**50 s"

        # And SIGTERM stops the node within its grace period and flush deadline
        started = time.monotonic()
        assert node.stop(60) == 0
        assert time.monotonic() - started < GRACE + FLUSH_DEADLINE + EXIT_MARGIN
        assert "Traceback" not in node.output()
        assert "HugeBackoff.backoff returned 1125899906842624.0" in node.output()
