"""Sync jobs on threads vs worker processes (``Runtime(processes=N)``), on one node.

Two rows, each run once on threads and once with ``--processes``:

- **CPU-bound**: jobs of pure-Python arithmetic (about 25 ms of CPU each) at
  queue limit N. Threads share one interpreter lock, so they use one core; N processes use N.
  Reported: the drain's wall time on each, and the speed-up (threads' time / processes' time).
- **Hand-off cost**: no-op sync jobs at limit 20, so what is measured is the cost of handing a job
  to a thread or to a process and reading its result back (jobs/s, and µs per job).

The node is started first (processes ready); the clock runs from the producers' first claim to
the last job completed. ``--full`` runs more jobs; N defaults to 2 (the machine's core count is
reported beside it: on a machine busy with other work the speed-up is lower than N).

    python -m benchmarks.processes [--full] [--processes N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import sql

from pgqueue.localdb import find_database
from pgqueue.migrate import migrate
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_processes"
QUEUE = "bench_cpu"
WORKERS = "benchmarks.cpu_worker"
LOOPS = 100_000


def _prepare(dsn: str, worker: str, count: int, args: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker, queue, args) SELECT %s, %s, %s::jsonb FROM generate_series(1, %s)"
            ).format(sql.Identifier(SCHEMA, "jobs")),
            (worker, QUEUE, json.dumps(args), count),
        )


async def _drain(dsn: str, count: int, limit: int, processes: int) -> float:
    runtime = Runtime(
        dsn,
        schema=SCHEMA,
        queues={QUEUE: {"limit": limit, "paused": True}},
        workers=[WORKERS],
        processes=processes,
        plugins=[Stager()],
    )
    query = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(
        sql.Identifier(SCHEMA, "jobs")
    )
    async with runtime, await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        producer = runtime.running_queues()[QUEUE]
        producer.resume()
        deadline = started + 600
        while True:
            row = await (await conn.execute(query)).fetchone()
            if row is not None and row[0] >= count:
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the drain did not finish in 600 s ({row} of {count})")
            await anyio.sleep(0.01)


def measure(dsn: str, *, cpu_jobs: int, noop_jobs: int, processes: int) -> dict[str, Any]:
    result: dict[str, Any] = {"processes": processes, "cpus": os.cpu_count(), "loops": LOOPS}
    for label, workers in (("threads", 0), ("processes", processes)):
        _prepare(dsn, "bench.Burn", cpu_jobs, {"loops": LOOPS})
        result[f"cpu_{label}_s"] = anyio.run(_drain, dsn, cpu_jobs, processes, workers)
        _prepare(dsn, "bench.SyncNoop", noop_jobs, {})
        result[f"noop_{label}_s"] = anyio.run(_drain, dsn, noop_jobs, 20, workers)
    result["cpu_jobs"] = cpu_jobs
    result["noop_jobs"] = noop_jobs
    result["cpu_speedup"] = result["cpu_threads_s"] / result["cpu_processes_s"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.processes")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    cpu_jobs, noop_jobs = (400, 20_000) if args.full else (80, 4_000)
    dsn = find_database().dsn
    result = measure(dsn, cpu_jobs=cpu_jobs, noop_jobs=noop_jobs, processes=args.processes)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    mode = "full" if args.full else "quick"
    n = result["processes"]
    cpu_t, cpu_p = result["cpu_threads_s"], result["cpu_processes_s"]
    noop_t, noop_p = result["noop_threads_s"], result["noop_processes_s"]
    lines = [
        f"# Sync jobs on threads vs {n} worker processes ({mode} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}, {result['cpus']} CPUs "
        "(shared with other work: ratios, not absolute times, are what to compare).",
        "",
        "| Workload | Jobs | Threads | `--processes " + str(n) + "` | Ratio |",
        "|---|---|---|---|---|",
        f"| CPU-bound ({LOOPS:,} loops each), limit {n} | {cpu_jobs:,} | {cpu_t:.2f} s | {cpu_p:.2f} s | "
        f"{result['cpu_speedup']:.2f}x faster |",
        f"| No-op (hand-off cost), limit 20 | {noop_jobs:,} | {noop_jobs / noop_t:,.0f} jobs/s "
        f"({noop_t / noop_jobs * 1e6:.0f} µs/job) | {noop_jobs / noop_p:,.0f} jobs/s "
        f"({noop_p / noop_jobs * 1e6:.0f} µs/job) | {noop_t / noop_p:.2f}x |",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"processes-{stamp}-{mode}", f"processes-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps({"mode": mode, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
