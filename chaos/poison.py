"""Poison: ordinary jobs in two queues with jobs among them whose acks PostgreSQL can't store as
given, and rows the nodes can't decode.

Two ``python -m pgqueue start`` nodes, their sessions in America/New_York, run 10,000 ordinary
jobs (50,000 in the full form) in queues ``alpha`` and ``beta``. Among them: a worker failing with
a NUL in its message, one with a lone surrogate, one whose backoff is 2**50 seconds, a row written
with plain SQL whose args nest 2,000 deep (past what the client decodes), and one whose
``scheduled_at`` is year 1 UTC (1 BC in New York). Before the fix any one of these stopped a node
for every queue. Every ordinary job must complete exactly once, each poison job must end with its
error recorded, both queues must still pick up new work at once, and SIGTERM must stop each node
within its grace period plus its flush deadline.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

import pgqueue

from .context import Context
from .database import Probe, insert_jobs
from .processes import ConditionTimeout, Process, fleet, wait_until
from .report import ScenarioResult
from .workers import Busy, HugeBackoff, NulError, SurrogateError

__all__ = ["poison"]

QUEUES = ("alpha", "beta")
NODES = 2
ZONE = "America/New_York"
GRACE = 2.0
#: the runtime's default shutdown_flush_timeout
FLUSH_DEADLINE = 5.0
#: process exit and interpreter teardown, on a busy machine
EXIT_MARGIN = 3.0


@dataclass(frozen=True)
class Poison:
    """One poison job and what its last error must say."""

    label: str
    queue: str
    expect: str
    #: the states it may be in when checked (a job with attempts left keeps retrying)
    states: tuple[str, ...] = ("retryable", "available", "executing", "discarded")


def _insert_raw(conn: psycopg.Connection[Any], schema: str, queue: str, args: str, scheduled_at: str) -> int:
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (worker, queue, args, scheduled_at) VALUES (%s, %s, %s::jsonb, %s::timestamptz)"
            " RETURNING id"
        ).format(sql.Identifier(schema, "jobs")),
        (Busy.name, queue, args, scheduled_at),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _seed(ctx: Context, schema: str, total: int) -> tuple[list[int], dict[int, Poison]]:
    """Insert the ordinary jobs in four slices with the poison between them; (ordinary, poison)."""
    dsn = ctx.server.dsn
    ordinary: list[int] = []
    poison: dict[int, Poison] = {}
    slice_size = total // 4
    steps = [
        (
            NulError.new({}, queue="alpha"),
            Poison("NUL in the error", "alpha", "unexpected byte in payload: \\x00"),
        ),
        (
            SurrogateError.new({}, queue="beta"),
            Poison("lone surrogate in the error", "beta", "can't open file b'\\xff': \\udcff"),
        ),
        (
            HugeBackoff.new({}, queue="alpha"),
            Poison("backoff of 2**50 s", "alpha", "RuntimeError: upstream down"),
        ),
    ]
    for index in range(4):
        count = slice_size if index < 3 else total - 3 * slice_size
        ordinary += insert_jobs(
            dsn, schema, [Busy.new({}, queue=QUEUES[(index + i) % 2]) for i in range(count)]
        )
        if index < len(steps):
            job, what = steps[index]
            with psycopg.connect(dsn, autocommit=True) as conn:
                poison[pgqueue.insert(conn, job, schema=schema).id] = what
    with psycopg.connect(dsn, autocommit=True) as conn:
        deep = '{"deep": ' + "[" * 2000 + "]" * 2000 + "}"
        undecodable = Poison("args nested 2,000 deep", "beta", "could not decode", ("discarded",))
        poison[_insert_raw(conn, schema, "beta", deep, "now")] = undecodable
        year_one = Poison("scheduled_at in year 1 UTC", "alpha", "could not decode", ("discarded",))
        poison[_insert_raw(conn, schema, "alpha", "{}", "0001-01-01 00:00:00+00")] = year_one
    return ordinary, poison


def _judge_poison(probe: Probe, poison: dict[int, Poison]) -> list[str]:
    rows = probe.rows("SELECT id, state::text, errors FROM {s}.jobs WHERE id = ANY(%s)", (list(poison),))
    problems: list[str] = []
    for job_id, state, errors in rows:
        what = poison[job_id]
        texts = [str(e.get("error", "")) for e in errors] if isinstance(errors, list) else []
        if state not in what.states:
            problems.append(f"{what.label}: {state}")
        elif not texts or what.expect not in texts[-1]:
            problems.append(f"{what.label}: last error {texts[-1][:80] if texts else None!r}")
        elif any("pgqueue could not record this attempt's outcome" in t for t in texts):
            problems.append(f"{what.label}: recorded with a placeholder, not its own error")
    missing = set(poison) - {row[0] for row in rows}
    problems += [f"{poison[job_id].label}: vanished" for job_id in missing]
    return problems


def _completed(probe: Probe, job_id: int) -> bool:
    return bool(probe.value("SELECT state::text = 'completed' FROM {s}.jobs WHERE id = %s", (job_id,)))


def _pickup(dsn: str, schema: str, probe: Probe) -> dict[str, float]:
    """Seconds each queue takes to run one new job once the poison has been met."""
    took: dict[str, float] = {}
    for queue in QUEUES:
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            job_id = pgqueue.insert(conn, Busy.new({}, queue=queue), schema=schema).id
        wait_until(
            functools.partial(_completed, probe, job_id),
            timeout=30,
            interval=0.02,
            message=f"queue {queue} never ran a new job",
        )
        took[queue] = time.monotonic() - started
    return took


def _stop(nodes: list[Process]) -> dict[str, tuple[int, float]]:
    """SIGTERM each node in turn: name → (exit status, seconds it took)."""
    stopped: dict[str, tuple[int, float]] = {}
    for node in nodes:
        started = time.monotonic()
        status = node.stop(GRACE + FLUSH_DEADLINE + EXIT_MARGIN + 10)
        stopped[node.name] = (status, time.monotonic() - started)
    return stopped


def poison(ctx: Context) -> ScenarioResult:
    name = "poison"
    total = 10_000 if ctx.short else 50_000
    result = ScenarioResult(
        name,
        f"{NODES} `python -m pgqueue start` nodes (sessions in {ZONE}) run {total:,} jobs in two queues with "
        "a NUL error, a lone-surrogate error, a 2**50 s backoff and two undecodable rows among them; "
        "then SIGTERM.",
        jobs=total,
    )
    schema = ctx.server.new_schema("poison")
    ordinary, poisoned = _seed(ctx, schema, total)
    ctx.say(name, f"{total:,} ordinary jobs and {len(poisoned)} poison jobs inserted in schema {schema}")
    node_dsn = psycopg.conninfo.make_conninfo(ctx.server.dsn, options=f"-c timezone={ZONE}")
    queues = ",".join(f"{queue}:20" for queue in QUEUES)
    with Probe(ctx.server.dsn, schema) as probe, fleet(ctx.logs_for(name)) as processes:
        nodes = [
            processes.pgqueue(f"poison-{i}", node_dsn, schema, queues=queues, shutdown_grace=GRACE)
            for i in range(1, NODES + 1)
        ]
        started = time.monotonic()
        drained = True
        try:
            wait_until(lambda: probe.count("completed") >= total, timeout=ctx.pick(180, 600), interval=0.2)
        except ConditionTimeout:
            drained = False
        drain_seconds = time.monotonic() - started
        pickup: dict[str, float] = {}
        if drained:
            with contextlib.suppress(ConditionTimeout):
                wait_until(lambda: not _judge_poison(probe, poisoned), timeout=30, interval=0.2)
            pickup = _pickup(ctx.server.dsn, schema, probe)
        problems = _judge_poison(probe, poisoned)
        executions = probe.executions_by_job()
        completed = {
            int(row[0])
            for row in probe.rows(
                "SELECT id FROM {s}.jobs WHERE id = ANY(%s) AND state = 'completed'", (ordinary,)
            )
        }
        alive = all(node.alive() for node in nodes)
        stopped = _stop(nodes)
        logs = [node.output() for node in nodes]

    result.lost = sum(1 for job_id in ordinary if job_id not in completed or job_id not in executions)
    result.duplicates = sum(len(executions.get(job_id, [])) > 1 for job_id in ordinary)
    result.unjustified = result.duplicates
    result.check(
        "every ordinary job completed exactly once",
        drained and result.lost == 0 and result.duplicates == 0,
        f"{len(completed):,}/{total:,} completed in {drain_seconds:.1f} s, {result.duplicates} ran twice",
    )
    result.check(
        "each poison job ended with its own error recorded",
        not problems,
        "; ".join(problems) or ", ".join(p.label for p in poisoned.values()),
    )
    result.check(
        "no queue stalled: each still runs a new job within 2 s",
        bool(pickup) and max(pickup.values()) <= 2.0,
        ", ".join(f"{q}: {s * 1000:.0f} ms" for q, s in pickup.items()) or "not measured",
    )
    result.check("both nodes ran until told to stop", alive)
    deadline = GRACE + FLUSH_DEADLINE + EXIT_MARGIN
    result.check(
        f"SIGTERM stops each node, exit 0, within grace + flush deadline ({GRACE:g} + {FLUSH_DEADLINE:g} s)",
        all(status == 0 and seconds <= deadline for status, seconds in stopped.values()),
        ", ".join(f"{n}: exit {s} in {t:.1f} s" for n, (s, t) in stopped.items()),
    )
    result.check(
        "no node logged a traceback",
        not any("Traceback" in log for log in logs),
        f"{len(logs)} logs read",
    )
    result.figures.update(
        {
            "ordinary jobs": total,
            "poison jobs": len(poisoned),
            "drain (s)": round(drain_seconds, 1),
            "acks replaced by a placeholder": sum(log.count("writing it with a placeholder") for log in logs),
        }
    )
    return result
