"""Hostile input: rows written straight into ``jobs``, malformed notifications on pgqueue's channels,
and schema, queue and node names shaped like SQL injection.

One ``python -m pgqueue start`` node (and, on the same schema, one ``python -m chimeway.worker``)
runs in a schema whose name tries to drop a canary table, on queues whose names try the same. Rows
name unknown workers, importable modules that must never be imported, shell commands; carry args
that are not objects, meta that is not an object, ``max_attempts`` at both limits, 5 MB of args;
some are orphans of a node that never existed. Normal jobs are interleaved throughout. The runtime
must never crash, never import code a row names, end every hostile row the way its contract says
with a clear error, and keep serving everything else.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgqueue
from pgqueue.store import channel_name

from .chimeway_storm import deliver_a_few
from .context import Context
from .database import Probe, insert_jobs
from .outages import PROBE_QUEUE, pickup_latencies
from .processes import ConditionTimeout, clean_exits, fleet, wait_until
from .report import ScenarioResult
from .workers import Busy, Failing, Snoozer

__all__ = ["hostile_input"]

MAX_INT4 = 2**31 - 1
HUGE = 5 * 1024 * 1024
RESCUE_WINDOW = 3.0
DISCARDED = ("discarded",)
RETRYING = ("retryable", "available", "executing")


@dataclass(frozen=True)
class Row:
    """A job row written with plain SQL, and what must become of it."""

    label: str
    worker: str
    args: str = "{}"
    meta: str = "{}"
    max_attempts: int = 20
    attempt: int = 0
    #: an orphan: executing, claimed by a producer that never heartbeat
    orphan: bool = False
    queue: str = "default"
    #: the states it may end in (a job with attempts left keeps retrying)
    expect: tuple[str, ...] = ("completed",)
    #: the last error must contain this
    error: str | None = None


def _rows(canary_module: str, marker: Path) -> list[Row]:
    unknown = "unknown worker"
    return [
        Row("unknown worker", "no.such.Worker", max_attempts=1, expect=DISCARDED, error=unknown),
        Row("unknown worker, attempts left", "no.such.Worker", expect=RETRYING, error=unknown),
        Row(
            "worker naming an importable module",
            canary_module,
            max_attempts=1,
            expect=DISCARDED,
            error=unknown,
        ),
        Row(
            "worker naming a shell command",
            "os.system",
            args=json.dumps([f"touch {marker}"]),
            max_attempts=1,
            expect=DISCARDED,
            error=unknown,
        ),
        Row(
            "worker name shaped like SQL injection",
            "x'); DELETE FROM jobs; --",
            max_attempts=1,
            expect=DISCARDED,
            error=unknown,
        ),
        Row("worker name of 255 characters", "w" * 255, max_attempts=1, expect=DISCARDED, error=unknown),
        Row("args a list", _name(Busy), args="[1, 2]", expect=DISCARDED, error="got list"),
        Row("args a string", _name(Busy), args='"x"', expect=DISCARDED, error="got str"),
        Row("args null", _name(Busy), args="null", expect=DISCARDED, error="got NoneType"),
        Row("args a number", _name(Busy), args="42", expect=DISCARDED, error="got int"),
        Row(
            "max_attempts 1, failing",
            _name(Failing),
            max_attempts=1,
            expect=DISCARDED,
            error="deliberate failure",
        ),
        Row(
            "max_attempts 2147483647, failing",
            _name(Failing),
            max_attempts=MAX_INT4,
            expect=RETRYING,
            error="deliberate failure",
        ),
        Row(
            "last of 2147483647 attempts, failing",
            _name(Failing),
            max_attempts=MAX_INT4,
            attempt=MAX_INT4 - 1,
            expect=DISCARDED,
            error="deliberate failure",
        ),
        Row("max_attempts 2147483647", _name(Busy), max_attempts=MAX_INT4),
        Row("args of 5 MB", _name(Busy), args=json.dumps({"blob": "x" * HUGE})),
        Row(
            "args of 5 MB, unknown worker",
            "no.such.Worker",
            args=json.dumps({"blob": "y" * HUGE}),
            max_attempts=1,
            expect=DISCARDED,
            error=unknown,
        ),
        Row("meta a list", _name(Busy), meta="[1]"),
        Row("meta a list, snoozing", _name(Snoozer), meta="[1]"),
        Row(
            "meta with a rescued count that is not a number, snoozing",
            _name(Snoozer),
            meta='{"rescued": "many", "snoozed": "lots"}',
        ),
        Row("orphan", _name(Busy), orphan=True, attempt=1),
        Row("orphan with meta a list", _name(Busy), meta="[1]", orphan=True, attempt=1),
        Row("orphan with meta a string", _name(Busy), meta='"x"', orphan=True, attempt=1),
        Row(
            "orphan with a rescued count that is not a number",
            _name(Busy),
            meta='{"rescued": "many"}',
            orphan=True,
            attempt=1,
        ),
        Row(
            "orphan out of attempts",
            _name(Busy),
            orphan=True,
            attempt=1,
            max_attempts=1,
            expect=DISCARDED,
            error="rescued",
        ),
    ]


def _name(worker: type[pgqueue.Worker]) -> str:
    return worker.new({}).worker


def _insert_row(conn: psycopg.Connection[Any], schema: str, row: Row, queue: str) -> int:
    statement = sql.SQL(
        "INSERT INTO {} (state, worker, queue, args, meta, max_attempts, attempt, attempted_at, attempted_by)"
        " VALUES (%(state)s::text::{}, %(worker)s, %(queue)s, %(args)s::jsonb, %(meta)s::jsonb,"
        " %(max_attempts)s, %(attempt)s, %(attempted_at)s, %(attempted_by)s) RETURNING id"
    ).format(sql.Identifier(schema, "jobs"), sql.Identifier(schema, "job_state"))
    params = {
        "state": "executing" if row.orphan else "available",
        "worker": row.worker,
        "queue": queue,
        "args": row.args,
        "meta": row.meta,
        "max_attempts": row.max_attempts,
        "attempt": row.attempt,
        "attempted_at": "now" if row.orphan else None,
        "attempted_by": ["a-node-that-never-was", str(uuid.uuid4())] if row.orphan else None,
    }
    (job_id,) = conn.execute(statement, params).fetchone()  # type: ignore[misc]
    return int(job_id)


def _malformed_payloads() -> dict[str, list[str]]:
    deep = "[" * 3_900 + "]" * 3_900  # past the JSON decoder's recursion limit, under 8000 bytes
    junk = [
        "",
        "not json",
        "{",
        "[]",
        '"a string"',
        "123",
        "null",
        "true",
        deep,
        "\\u0000",
        "{" + "x" * 7_900,
    ]
    return {
        "insert": [
            *junk,
            "{}",
            '{"queue": 5}',
            '{"queue": null}',
            '{"queue": ["default"]}',
            '{"queue": {"default": 1}}',
            '{"queue": "no such queue"}',
            json.dumps({"queue": "q" * 7_900}),
        ],
        "signal": [
            *junk,
            '{"action": null}',
            '{"action": 123}',
            '{"action": "bogus", "queue": "*"}',
            '{"action": "pause"}',
            '{"action": "pause", "queue": 123}',
            '{"action": "resume", "queue": ["default"]}',
            '{"action": "scale", "queue": "default", "limit": "ten"}',
            '{"action": "scale", "queue": "default", "limit": 0}',
            '{"action": "scale", "queue": "default", "limit": -1}',
            '{"action": "scale", "queue": "default", "limit": 1e400}',
            '{"action": "scale", "queue": "default", "limit": true}',
            '{"action": "scale", "queue": "default", "limit": 99999999999999999999}',
            '{"action": "scale", "queue": "default"}',
            '{"action": "start", "queue": "", "limit": 1}',
            '{"action": "start", "queue": "new", "limit": -5}',
            '{"action": "start", "queue": "new"}',
            '{"action": "start", "queue": "new", "limit": 1, "paused": "no"}',
            '{"action": "pkill", "job_id": "1"}',
            '{"action": "pkill", "job_id": 1e400}',
            '{"action": "pkill"}',
            '{"action": "pause", "queue": "default", "node": {"a": 1}}',
        ],
        "leader": [*junk, '{"down": 5}', '{"down": null, "name": []}', '{"name": {"x": 1}}'],
    }


def _notify_all(dsn: str, schema: str) -> int:
    sent = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for topic, payloads in _malformed_payloads().items():
            for payload in payloads:
                conn.execute("SELECT pg_notify(%s, %s)", (channel_name(schema, topic), payload))
                sent += 1
    return sent


def _injection_names(tag: str, canary: str) -> tuple[str, list[str], str]:
    schema = f'h{tag}"; DROP TABLE {canary}; --'
    queues = [f"q'); DROP TABLE {canary}; --", f'q"; DROP TABLE {canary}; --', "q %(queue)s {jobs} \\ ✓"]
    node = f"n'; DROP TABLE {canary}; --"
    return schema, queues, node


def hostile_input(ctx: Context) -> ScenarioResult:
    name = "hostile-input"
    result = ScenarioResult(
        name,
        "Rows written straight into `jobs` (unknown or importable workers, non-object args and meta, "
        "max_attempts 1 and 2147483647, 5 MB args, orphans), malformed notifications on every channel, "
        "and schema, queue and node names shaped like SQL injection; normal jobs interleaved.",
    )
    tag = uuid.uuid4().hex[:8]
    canary = f"chaos_canary_{tag}"
    schema, queues, node_name = _injection_names(tag, canary)
    logs = ctx.logs_for(name)
    marker, shell_marker = logs / "canary-imported", logs / "shell-ran"
    with psycopg.connect(ctx.server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(canary)))
    try:
        ctx.server.new_schema("hostile", chimeway=True, name=schema)
        rows = _rows("chaos.canary.Canary", shell_marker)
        _run(ctx, result, schema, queues, node_name, rows, marker, shell_marker, logs)
        with psycopg.connect(ctx.server.dsn, autocommit=True) as conn:
            survived = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (canary,)).fetchone()
        result.check(
            "the canary table survived every injection-shaped name", bool(survived and survived[0]), canary
        )
    finally:
        with psycopg.connect(ctx.server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(canary)))
    return result


def _run(
    ctx: Context,
    result: ScenarioResult,
    schema: str,
    queues: list[str],
    node_name: str,
    rows: list[Row],
    marker: Path,
    shell_marker: Path,
    logs: Path,
) -> None:
    dsn = ctx.server.dsn
    all_queues = ["default", *queues]
    normal: list[int] = []

    def normal_batch(count: int) -> None:
        normal.extend(
            insert_jobs(dsn, schema, [Busy.new({}, queue=q) for q in all_queues for _ in range(count)])
        )

    with Probe(dsn, schema) as probe, fleet(logs) as processes:
        node = processes.pgqueue(
            node_name,
            dsn,
            schema,
            queues=",".join(f"{q}:5" for q in all_queues) + f",{PROBE_QUEUE}:1",
            rescue_window=RESCUE_WINDOW,
            extra_env={"CHAOS_CANARY_FILE": str(marker)},
        )
        wait_until(lambda: probe.leader() == node_name, timeout=60, message="the node never led")
        normal_batch(20)
        hostile: dict[int, Row] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for index, row in enumerate(rows):
                hostile[_insert_row(conn, schema, row, all_queues[index % len(all_queues)])] = row
        normal_batch(20)
        sent = _notify_all(dsn, schema)
        normal_batch(20)
        ctx.say("hostile-input", f"{len(hostile)} hostile rows, {sent} malformed notifications sent")

        def settled() -> list[str]:
            return _unsettled(probe, hostile)

        with contextlib.suppress(ConditionTimeout):
            wait_until(lambda: not settled(), timeout=90, interval=0.5)
        unsettled = settled()
        wait_until(
            lambda: _completed(probe, normal) == len(normal),
            timeout=90,
            interval=0.2,
            message="the normal jobs never all completed",
        )
        latencies = pickup_latencies(dsn, schema, probe, 6, ctx.rng("hostile-input"))
        delivered = deliver_a_few(ctx, schema, processes, logs, node=f"cw{node_name}")
        executions = probe.executions_by_job()
        completed = _completed(probe, normal)
        alive = node.alive()
        exits = clean_exits([node])

    result.jobs = len(normal) + len(hostile)
    result.lost = len(normal) - completed
    result.duplicates = sum(len(executions.get(job_id, [])) > 1 for job_id in normal)
    result.unjustified = result.duplicates
    result.check("the node never crashed", alive)
    result.check(
        "every normal job, interleaved with the hostile input, completed once",
        result.lost == 0 and result.duplicates == 0,
        f"{len(normal)} jobs on queues {all_queues}",
    )
    result.check(
        "every hostile row ended as its contract says, with a clear error where it failed",
        not unsettled,
        "; ".join(unsettled[:6]) or f"{len(hostile)} rows",
    )
    result.check(
        "no row made a process import code or run a command",
        not marker.exists() and not shell_marker.exists(),
        "chaos.canary never imported; os.system never called",
    )
    median = statistics.median(latencies)
    result.check(
        "the notifier still delivers after the malformed notifications",
        median <= 0.25,
        f"median pickup {median * 1000:.0f} ms",
    )
    result.check(
        "chimeway delivers on the injection-shaped schema",
        delivered[0] == delivered[1],
        f"{delivered[0]} of {delivered[1]} deliveries succeeded",
    )
    result.checks += exits
    result.figures.update(
        {"hostile rows": len(hostile), "malformed notifications": sent, "schema": schema, "node": node_name}
    )


def _completed(probe: Probe, ids: list[int]) -> int:
    return int(
        probe.value("SELECT count(*) FROM {s}.jobs WHERE id = ANY(%s) AND state = 'completed'", (ids,))
    )


def _unsettled(probe: Probe, hostile: dict[int, Row]) -> list[str]:
    found = probe.rows(
        "SELECT id, state::text, errors FROM {s}.jobs WHERE id = ANY(%s)", (list(hostile),), timeout=60
    )
    problems = []
    for job_id, state, errors in found:
        row = hostile[job_id]
        last = str(errors[-1].get("error", "")) if isinstance(errors, list) and errors else ""
        if state not in row.expect:
            problems.append(f"{row.label}: {state}, expected {'/'.join(row.expect)} ({last[:80]!r})")
        elif row.error is not None and row.error not in last:
            problems.append(f"{row.label}: error {last[:80]!r} lacks {row.error!r}")
    missing = set(hostile) - {job_id for job_id, _s, _e in found}
    problems += [f"{hostile[job_id].label}: row vanished" for job_id in missing]
    return problems
