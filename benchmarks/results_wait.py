"""Results: what awaiting a job costs the caller, and what results cost the jobs nobody awaits.

Every node is a real ``python -m pgqueue start`` process; the waiters run here.

1. **Wake-up latency**: a ``Stamp`` job sleeps a few milliseconds, then returns ``time.time()``;
   the caller, already waiting in ``pgqueue.await_job`` on an open connection, subtracts that from
   the time it got the value. That spans the completer's batching, the ack statement's commit, the
   NOTIFY and the re-read of the row: completion to caller. p50/p99 over sequential waits.
2. **No-result cost** (W2's shape: a preloaded backlog of no-op jobs, one node at concurrency 100):
   this tree against a baseline (``git archive`` of ``--baseline``, by default the commit where
   this branch left ``main``), round by round in the same run, each on a schema migrated by its
   own code; jobs/s from the first start to the last completion by the database clock, and the
   ratio.

    python -m benchmarks.results_wait [--full] [--rounds N] [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgqueue
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mode:
    name: str
    waits: int
    drain_jobs: int
    drain_rounds: int


QUICK = Mode("quick", waits=200, drain_jobs=5_000, drain_rounds=2)
FULL = Mode("full", waits=1_000, drain_jobs=20_000, drain_rounds=3)


def _env(dsn: str, tree: Path) -> dict[str, str]:
    # The tree's own pgqueue first, then the repository for the benchmarks' worker module.
    paths = [str(tree / "queue"), str(REPOSITORY), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def _migrate(dsn: str, tree: Path, schema: str) -> None:
    """Drop ``schema`` and migrate it with ``tree``'s own code (its SQL files, its version)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    code = (
        "import os, sys, psycopg, pgqueue; from pgqueue.migrate import migrate;"
        "conn = psycopg.connect(os.environ['DATABASE_URL']); migrate(conn, sys.argv[1]); conn.commit();"
        "print(pgqueue.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, schema], env=_env(dsn, tree), cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"migrating {schema} with {tree} failed: {done.stderr[-800:]}")
    if not done.stdout.strip().startswith(str(tree)):
        raise RuntimeError(f"{tree} did not provide pgqueue (got {done.stdout.strip()})")


class Node:
    """One ``python -m pgqueue start`` process running ``tree``'s pgqueue."""

    def __init__(self, dsn: str, tree: Path, schema: str, queues: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgqueue",
                "start",
                "--dsn",
                dsn,
                "--schema",
                schema,
                "--queues",
                queues,
                "--workers",
                "benchmarks.results_worker",
                "--log-level",
                "warning",
            ],
            cwd=tree,
            env=_env(dsn, tree),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            error = self.process.stderr.read().decode()[-800:] if self.process.stderr else ""
            raise RuntimeError(f"a node exited: {error}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# -- 1. wake-up latency ----------------------------------------------------------------------------


async def _waits(dsn: str, schema: str, count: int, node: Node) -> list[float]:
    from benchmarks.results_worker import Stamp

    latencies: list[float] = []
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as inserter,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as waiter,
    ):
        for index in range(count + 10):
            job = await pgqueue.ainsert(inserter, Stamp.new({"ms": 20}), schema=schema)
            finished = await pgqueue.await_job(waiter, job, timeout=30, schema=schema)
            woken = time.time()
            node.check()
            if index >= 10:  # the first few warm the node's pool and the caches
                latencies.append((woken - float(finished)) * 1000)
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def wake_up_latency(dsn: str, mode: Mode) -> dict[str, Any]:
    schema = "bench_results_wait"
    _migrate(dsn, REPOSITORY, schema)
    node = Node(dsn, REPOSITORY, schema, "stamp:10")
    try:
        latencies = asyncio.run(_waits(dsn, schema, mode.waits, node))
    finally:
        node.stop()
    return {
        "waits": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p90_ms": round(_percentile(latencies, 0.90), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
    }


# -- 2. no-result cost -----------------------------------------------------------------------------


def _drain(dsn: str, tree: Path, schema: str, jobs: int) -> float:
    jobs_table = sql.Identifier(schema, "jobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(jobs_table))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker, queue, args) SELECT 'bench.ResultsNoop', 'bench', "
                "jsonb_build_object('seq', g) FROM generate_series(1, %s) AS g"
            ).format(jobs_table),
            (jobs,),
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs_table))
        node = Node(dsn, tree, schema, "bench:100")
        try:
            deadline = time.monotonic() + 600
            done = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(jobs_table)
            while (row := conn.execute(done).fetchone()) is None or row[0] < jobs:
                node.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"drain not done within 600 s (last: {row})")
                time.sleep(0.05)
        finally:
            node.stop()
        span = conn.execute(
            sql.SQL("SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM {}").format(
                jobs_table
            )
        ).fetchone()
    assert span is not None
    return jobs / float(span[0])


def _baseline_tree(ref: str, folder: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", ref, "queue", "sql"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def no_result_cost(dsn: str, mode: Mode, baseline: str, folder: Path) -> dict[str, Any]:
    trees = {"baseline": _baseline_tree(baseline, folder / "baseline"), "this tree": REPOSITORY}
    schemas = {"baseline": "bench_results_base", "this tree": "bench_results_new"}
    for name, tree in trees.items():
        _migrate(dsn, tree, schemas[name])
    rates: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(mode.drain_rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            rate = _drain(dsn, trees[name], schemas[name], mode.drain_jobs)
            rates[name].append(rate)
            print(f"  round {round_ + 1} {name}: {rate:,.0f} jobs/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "baseline_ref": baseline,
        "baseline_commit": subprocess.run(
            ["git", "rev-parse", "--short", baseline], cwd=REPOSITORY, capture_output=True, text=True
        ).stdout.strip(),
        "jobs": mode.drain_jobs,
        "rates": {name: [round(v) for v in values] for name, values in rates.items()},
        "median_jobs_per_s": {name: round(v) for name, v in medians.items()},
        "ratio": round(medians["this tree"] / medians["baseline"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.results_wait", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="1,000 waits and 3 rounds of 20,000 jobs")
    parser.add_argument(
        "--baseline",
        default=None,
        help="the git ref to compare the drain with (default: where HEAD left main)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="drain rounds per tree (quick 2, full 3)")
    args = parser.parse_args(argv)
    mode = FULL if args.full else QUICK
    if args.baseline is None:
        args.baseline = subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
    if args.rounds is not None:
        mode = Mode(mode.name, mode.waits, mode.drain_jobs, max(1, args.rounds))
    dsn = find_database().dsn
    print(f"results ({mode.name}): wake-up latency over {mode.waits} waits", flush=True)
    latency = wake_up_latency(dsn, mode)
    print(f"  p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms", flush=True)
    print(
        f"no-result cost: W2 drain of {mode.drain_jobs:,} jobs at C=100, against {args.baseline}", flush=True
    )
    with tempfile.TemporaryDirectory() as folder:
        cost = no_result_cost(dsn, mode, args.baseline, Path(folder))
    print(f"  this tree / baseline = {cost['ratio']:.3f}", flush=True)
    report = {
        "mode": mode.name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "wake_up_latency": latency,
        "no_result_cost": cost,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"results-{stamp}-{mode.name}.json", f"results-latest-{mode.name}.json"):
        (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
