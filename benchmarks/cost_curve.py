"""W5, the cost curve: how the drain and the fetch move as the jobs table grows.

Each backlog is built in SQL (``generate_series``), vacuumed but never analyzed, with autovacuum
disabled on the table, and checkpointed (see ``benchmarks.cost_table``): the planner knows the
table's size and nothing else, the state in which a claim without fixed plan settings reads the
whole backlog. At each point:

- **fetch latency**: 100 fetch statements (claim 100, rolled back), p50 and p99;
- **drain**: a node at queue limit 100 works off a fixed sample (default 20,000 jobs) of the
  backlog, timed from resume to the poll that sees the sample completed; each poll (every 20 ms)
  inserts as many new jobs as have completed, so the backlog keeps its size throughout; with it,
  the fetch-index entries the drain's claims walked per job;

then the table is analyzed and the point is measured again. Points: ``--available`` jobs waiting,
and ``--completed`` finished-but-unpruned rows beside 20,000 waiting.

Also measured: the drain with 1, 2, 4, 8 worker processes on one queue (sync no-op jobs, each job
run exactly once: one attempt each); pruning the largest completed backlog (rows/s, table and index
size before and after, and the longest fetch while the pruner runs next to a fetch loop); and an
``idle in transaction`` session holding back the xmin horizon under steady load (throughput and
dead tuples every 5 s, before, during and after; the table is vacuumed every 10 s, as autovacuum
would with a 10 s naptime, so the run doesn't depend on the server's autovacuum settings).

    python -m benchmarks.cost_curve                      # 10k, 100k, 1M; 1M completed; 60 s hold
    python -m benchmarks.cost_curve --full               # adds 10M available and 10M completed; 600 s hold
    python -m benchmarks.cost_curve --available 10000,100000 --completed 0 --hold 30
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import sql

from benchmarks.cost_table import (
    BESIDE,
    JOBS,
    PRODUCER,
    QUEUE,
    SCHEMA,
    WORKERS,
    analyze,
    fetch_index_reads,
    fill,
    reset,
)
from benchmarks.cost_upkeep import measure_pinned_xmin, measure_prune, upkeep_markdown
from pgqueue.executor import fetch_params
from pgqueue.localdb import find_database
from pgqueue.runtime import Runtime
from pgqueue.store import queries_for

RESULTS = Path(__file__).resolve().parent / "results"


def _fetch_latency(dsn: str, fetches: int = 100, demand: int = 100) -> dict[str, float]:
    statement = queries_for(SCHEMA).fetch_jobs
    params = fetch_params([], queue=QUEUE, demand=demand, node="bench", producer=PRODUCER)
    times: list[float] = []
    with psycopg.connect(dsn) as conn:
        for _ in range(fetches):
            started = time.perf_counter()
            rows = conn.execute(statement, params).fetchall()
            times.append((time.perf_counter() - started) * 1000)
            conn.rollback()
            if len(rows) < demand:
                raise RuntimeError(f"a fetch claimed {len(rows)} of {demand}: the backlog is too small")
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


_TOP_UP = sql.SQL(
    "INSERT INTO {} (queue, worker, args, priority) SELECT %s, 'bench.AsyncNoop', '{{}}', 0"
    " FROM generate_series(1, %s)"
).format(JOBS)


async def _drain(
    dsn: str, sample: int, *, processes: int = 0, limit: int = 100, top_up: bool = True
) -> float:
    """Jobs/s for a node at ``limit`` working off ``sample`` jobs of the backlog. With ``top_up``
    every completed job is replaced by a new one at each poll, so the backlog stays at its size
    (a 10,000-job point can be drained for 20,000 jobs; the inserts cost every point alike)."""
    runtime = Runtime(
        dsn,
        schema=SCHEMA,
        queues={QUEUE: {"limit": limit, "paused": True}},
        workers=[WORKERS],
        processes=processes,
        plugins=[],
    )
    done = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed' AND completed_at >= %s").format(JOBS)
    async with runtime, await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        since = (await (await conn.execute("SELECT now()")).fetchone() or [None])[0]
        started = time.perf_counter()
        runtime.running_queues()[QUEUE].resume()
        topped = 0
        while True:
            row = await (await conn.execute(done, (since,))).fetchone()
            if row is not None and row[0] >= sample:
                return sample / (time.perf_counter() - started)
            if top_up and row is not None and row[0] > topped:
                await conn.execute(_TOP_UP, (QUEUE, row[0] - topped))
                topped = row[0]
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"the drain did not reach {sample} in 900 s ({row})")
            await anyio.sleep(0.02)


# The claim as fetch_jobs.sql wrote it before migration 0007, timed beside it for comparison.
_INLINE_CLAIM = sql.SQL(
    "SELECT id FROM {} WHERE state = 'available' AND queue = %s"
    " ORDER BY priority, scheduled_at, id LIMIT 100 FOR UPDATE SKIP LOCKED"
).format(JOBS)


def _inline_claim_ms(dsn: str, runs: int = 3) -> float:
    times = []
    with psycopg.connect(dsn) as conn:
        for _ in range(runs):
            started = time.perf_counter()
            conn.execute(_INLINE_CLAIM, (QUEUE,)).fetchall()
            times.append((time.perf_counter() - started) * 1000)
            conn.rollback()
    return statistics.median(times)


def measure_point(dsn: str, *, available: int, completed: int, sample: int) -> dict[str, Any]:
    reset(dsn)
    point: dict[str, Any] = {"available": available, "completed": completed}
    point["build_s"] = fill(dsn, available=available, completed=completed)
    for condition in ("no_stats", "analyzed"):
        if condition == "analyzed":
            analyze(dsn)
        point[condition] = {**_fetch_latency(dsn), "inline_claim_p50_ms": _inline_claim_ms(dsn)}
        with psycopg.connect(dsn, autocommit=True) as conn:
            walked = fetch_index_reads(conn)
        point[condition]["drain_jobs_s"] = anyio.run(_drain, dsn, sample)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Fetch-index entries the drain's claims walked per job claimed: 1 when each claim reads
            # only what it takes; more when it walks entries of jobs claimed since the oldest running
            # transaction in the cluster (not yet removable, so not yet skipped: see scaling.md).
            point[condition]["index_entries_per_job"] = (fetch_index_reads(conn) - walked) / sample
        print(f"  {available:>10,} available {completed:>10,} completed  {condition:>8}: {point[condition]}")
    return point


def measure_processes(dsn: str, counts: Sequence[int], jobs: int) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        reset(dsn)
        fill(dsn, available=jobs, worker="bench.SyncNoop")
        rate = anyio.run(functools.partial(_drain, dsn, jobs, processes=n, top_up=False))
        with psycopg.connect(dsn) as conn:
            check = conn.execute(
                sql.SQL(
                    "SELECT count(*), max(attempt), count(*) FILTER (WHERE state <> 'completed') FROM {}"
                ).format(JOBS)
            ).fetchone()
        assert check is not None
        if check[1] != 1 or check[2] != 0:
            raise RuntimeError(f"{n} processes: {check[2]} jobs not completed, max attempt {check[1]}")
        rows.append({"processes": n, "jobs": jobs, "jobs_s": rate, "max_attempt": check[1]})
        print(f"  {n} processes: {rate:,.0f} jobs/s, every job run once")
    return rows


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# W5: the cost curve ({result['mode']} mode)",
        "",
        f"Run on {result['at']}, sample {result['sample']:,} jobs per drain, queue limit 100, one node; "
        "fetch = claim 100 (rolled back), 100 times. No stats = vacuumed, never analyzed, autovacuum off.",
        "",
        "| Available | Completed beside | Drain, no stats | Drain, analyzed | Fetch p50/p99, no stats | "
        "Fetch p50/p99, analyzed | Pre-0007 inline claim p50, no stats / analyzed | "
        "Index entries walked per job drained, no stats / analyzed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = result["points"][0]
    for p in result["points"]:
        ns, an = p["no_stats"], p["analyzed"]
        lines.append(
            f"| {p['available']:,} | {p['completed']:,} "
            f"| {ns['drain_jobs_s']:,.0f}/s | {an['drain_jobs_s']:,.0f}/s "
            f"| {ns['p50_ms']:.2f} / {ns['p99_ms']:.2f} ms | {an['p50_ms']:.2f} / {an['p99_ms']:.2f} ms | "
            f"{ns['inline_claim_p50_ms']:.1f} / {an['inline_claim_p50_ms']:.1f} ms | "
            f"{ns.get('index_entries_per_job', 0):.0f} / {an.get('index_entries_per_job', 0):.0f} |"
        )
    lines += ["", "Targets against the first row, per condition: drain ≥ 80 %, fetch p99 ≤ 2x.", ""]
    for p in result["points"][1:]:
        for condition in ("no_stats", "analyzed"):
            drain = p[condition]["drain_jobs_s"] / base[condition]["drain_jobs_s"]
            p99 = p[condition]["p99_ms"] / base[condition]["p99_ms"]
            verdict = "met" if drain >= 0.8 and p99 <= 2 else "missed"
            lines.append(
                f"- {p['available']:,} available, {p['completed']:,} completed, {condition}: "
                f"drain {drain:.0%}, "
                f"fetch p99 {p99:.2f}x — {verdict}"
            )
    lines += ["", "| Worker processes | Jobs | Jobs/s | Max attempt |", "|---|---|---|---|"]
    lines += [
        f"| {r['processes']} | {r['jobs']:,} | {r['jobs_s']:,.0f} | {r['max_attempt']} |"
        for r in result["processes"]
    ]
    lines += upkeep_markdown(result)
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x and int(x) > 0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost_curve")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--available", help="comma-separated backlog sizes")
    parser.add_argument("--completed", help="comma-separated completed backlogs beside 20,000 waiting")
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--hold", type=float, help="seconds the idle transaction is held (0: skip)")
    args = parser.parse_args(argv)
    available = _ints(
        args.available or ("10000,100000,1000000,10000000" if args.full else "10000,100000,1000000")
    )
    completed = _ints(args.completed or ("1000000,10000000" if args.full else "1000000"))
    hold = args.hold if args.hold is not None else (600.0 if args.full else 60.0)
    dsn = find_database().dsn
    started = time.perf_counter()
    result: dict[str, Any] = {"mode": "full" if args.full else "quick", "sample": args.sample}
    result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["points"] = [measure_point(dsn, available=n, completed=0, sample=args.sample) for n in available]
    result["points"] += [
        measure_point(dsn, available=BESIDE, completed=n, sample=args.sample // 2) for n in completed
    ]
    result["prune"] = (
        measure_prune(dsn, max(completed), reuse=completed[-1] == max(completed)) if completed else None
    )
    result["processes"] = measure_processes(dsn, _ints(args.processes), args.sample // 2)
    result["pinned"] = measure_pinned_xmin(dsn, hold=hold) if hold > 0 else None
    result["elapsed_s"] = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    markdown = _markdown(result)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"cost-{stamp}-{result['mode']}", f"cost-latest-{result['mode']}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
