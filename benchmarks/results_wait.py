"""Results: what awaiting a job costs the caller, and what results cost the jobs nobody awaits.

Every node is a real ``python -m pgqueue start`` process; the waiters run here.

1. **Wake-up latency**: a ``Stamp`` job sleeps a few milliseconds, then returns ``time.time()``;
   the caller, already waiting in ``pgqueue.await_job`` on an open connection, subtracts that from
   the time it got the value. That spans the completer's batching, the ack statement's commit, the
   NOTIFY and the re-read of the row: completion to caller. p50/p99 per round of sequential waits
   (with the machine's load average as the round started) and over all rounds, and where the time
   went, hop by hop: perform returned → the statement carrying its ack sent (the node's trace, see
   ``results_worker``) → the notification received by the caller → the caller returned.
2. **No-result cost** (W2's shape: a preloaded backlog of no-op jobs, one node at concurrency 100):
   this tree against a baseline (``git archive`` of ``--baseline``, by default the commit where
   this branch left ``main``), round by round in the same run, each on a schema migrated by its
   own code; jobs/s from the first start to the last completion by the database clock, and the
   ratio.

    python -m benchmarks.results_wait [--full] [--wait-rounds N] [--rounds N] [--baseline REF]
                                      [--database NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
from psycopg import Notify, sql

import pgqueue
from benchmarks.results_report import render
from benchmarks.results_worker import TRACE_VARIABLE
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "pgqueue_bench_results"
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mode:
    name: str
    #: sequential waits per round, and rounds
    waits: int
    wait_rounds: int
    drain_jobs: int
    drain_rounds: int


QUICK = Mode("quick", waits=200, wait_rounds=2, drain_jobs=5_000, drain_rounds=2)
FULL = Mode("full", waits=400, wait_rounds=5, drain_jobs=20_000, drain_rounds=3)


def bench_dsn(database: str) -> str:
    """``database`` on the server the suite uses, created when missing: a database of its own, so
    that no other client's LISTEN shares the wake-ups measured here (PostgreSQL signals every
    listener of the notifying database)."""
    base = find_database().dsn
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


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

    def __init__(self, dsn: str, tree: Path, schema: str, queues: str, trace: Path | None = None) -> None:
        env = _env(dsn, tree)
        if trace is not None:
            env[TRACE_VARIABLE] = str(trace)
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
            env=env,
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


class _Traced(psycopg.AsyncConnection[Any]):
    """The caller's connection, noting when each notification reached it (wall clock)."""

    last_notification = 0.0

    def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> AsyncGenerator[Notify]:
        received = super().notifies(timeout=timeout, stop_after=stop_after)

        async def noted() -> AsyncGenerator[Notify]:
            async for note in received:
                self.last_notification = time.time()
                yield note

        return noted()


@dataclass(frozen=True)
class _Wait:
    job_id: int
    finished: float
    notified: float
    returned: float
    #: the floor measured right after (see _Pinger), seconds
    floor: float


#: what the floor's other process runs: a NOTIFY carrying the wall-clock time, per line of stdin
_PINGER = (
    "import sys, time, psycopg\n"
    "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
    "for _ in sys.stdin:\n"
    "    conn.execute('SELECT pg_notify(%s, %s)', (sys.argv[2], repr(time.time())))\n"
)
_FLOOR_CHANNEL = "bench_results_floor"


class _Pinger:
    """The floor: a bare ``NOTIFY`` sent by another process, received by a ``LISTEN`` ing connection
    here, which then makes one round trip (``SELECT 1``) before it counts itself returned. The same
    processes and hops as a wake-up, without pgqueue's statement, its work or its re-read."""

    def __init__(self, dsn: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PINGER, dsn, _FLOOR_CHANNEL], stdin=subprocess.PIPE, text=True
        )

    async def ping(self, listener: psycopg.AsyncConnection[Any]) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        sent = 0.0
        async for note in listener.notifies(timeout=30, stop_after=1):
            sent = float(note.payload)
        if not sent:
            raise RuntimeError("the floor's NOTIFY never arrived")
        await listener.execute("SELECT 1")
        return time.time() - sent

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


async def _waits(dsn: str, schema: str, count: int, node: Node) -> list[_Wait]:
    from benchmarks.results_worker import Stamp

    waits: list[_Wait] = []
    pinger = _Pinger(dsn)
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as inserter,
        await _Traced.connect(dsn, autocommit=True) as waiter,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
    ):
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_FLOOR_CHANNEL)))
        for index in range(count + 10):
            job = await pgqueue.ainsert(inserter, Stamp.new({"ms": 20}), schema=schema)
            waiter.last_notification = 0.0
            finished = await pgqueue.await_job(waiter, job, timeout=30, schema=schema)
            returned = time.time()
            floor = await pinger.ping(listener)
            node.check()
            if index >= 10:  # the first few warm the node's pool and the caches
                waits.append(_Wait(job.id, float(finished), waiter.last_notification, returned, floor))
    pinger.stop()
    return waits


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.50), 2),
        "p90_ms": round(_percentile(values, 0.90), 2),
        "p99_ms": round(_percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
    }


def _hops(waits: list[_Wait], trace: Path) -> dict[str, Any]:
    """Where each wait's time went, from the node's trace and the caller's notification times."""
    handed: dict[int, float] = {}
    sent: list[tuple[float, str]] = []
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if "job" in event:
            handed[int(event["job"])] = float(event["at"])
        else:
            sent.append((float(event["sent"]), str(event["statement"])))
    sent.sort()
    starts = [at for at, _ in sent]
    hops: dict[str, list[float]] = {
        "perform → ack sent": [],
        "ack sent → caller notified": [],
        "notified → returned": [],
    }
    by: dict[str, int] = {"producer": 0, "completer": 0}
    for wait in waits:
        at = handed.get(wait.job_id)
        index = bisect.bisect_left(starts, at) if at is not None else len(starts)
        if index == len(starts) or not wait.notified:
            continue
        statement_sent, statement = sent[index]
        by[statement] += 1
        hops["perform → ack sent"].append((statement_sent - wait.finished) * 1000)
        hops["ack sent → caller notified"].append((wait.notified - statement_sent) * 1000)
        hops["notified → returned"].append((wait.returned - wait.notified) * 1000)
    return {
        "traced_waits": len(hops["notified → returned"]),
        "acks_written_by": by,
        "hops": {name: _spread(values) for name, values in hops.items() if values},
    }


def wake_up_latency(dsn: str, mode: Mode, folder: Path) -> dict[str, Any]:
    schema = "bench_results_wait"
    _migrate(dsn, REPOSITORY, schema)
    trace = folder / "node-trace.jsonl"
    trace.touch()
    node = Node(dsn, REPOSITORY, schema, "stamp:10", trace=trace)
    rounds: list[dict[str, Any]] = []
    every: list[_Wait] = []
    try:
        for number in range(mode.wait_rounds):
            load = os.getloadavg()[0]
            waits = asyncio.run(_waits(dsn, schema, mode.waits, node))
            latencies = [(w.returned - w.finished) * 1000 for w in waits]
            floor = _spread([w.floor * 1000 for w in waits])
            rounds.append(
                {
                    "round": number + 1,
                    "load_average": round(load, 2),
                    **_spread(latencies),
                    "floor_p50_ms": floor["p50_ms"],
                    "floor_p99_ms": floor["p99_ms"],
                }
            )
            print(
                f"  round {number + 1} (load {load:.1f}): p50 {rounds[-1]['p50_ms']} ms, "
                f"p99 {rounds[-1]['p99_ms']} ms",
                flush=True,
            )
            every += waits
    finally:
        node.stop()
    latencies = [(w.returned - w.finished) * 1000 for w in every]
    return {
        "waits": len(every),
        **_spread(latencies),
        "rounds": rounds,
        "median_round_p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
        "median_round_p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 2),
        "floor": _spread([w.floor * 1000 for w in every]),
        **_hops(every, trace),
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
    parser.add_argument(
        "--full", action="store_true", help="5 rounds of 400 waits and 3 rounds of 20,000 jobs"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="the git ref to compare the drain with (default: where HEAD left main)",
    )
    parser.add_argument(
        "--database",
        default=DATABASE,
        help=f"the database to run in, created when missing (default {DATABASE})",
    )
    parser.add_argument("--wait-rounds", type=int, default=None, help="rounds of waits (quick 2, full 5)")
    parser.add_argument("--rounds", type=int, default=None, help="drain rounds per tree (quick 2, full 3)")
    args = parser.parse_args(argv)
    mode = FULL if args.full else QUICK
    if args.baseline is None:
        args.baseline = subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
    if args.wait_rounds is not None:
        mode = replace(mode, wait_rounds=max(1, args.wait_rounds))
    if args.rounds is not None:
        mode = replace(mode, drain_rounds=max(1, args.rounds))
    dsn = bench_dsn(args.database)
    print(
        f"results ({mode.name}): wake-up latency, {mode.wait_rounds} rounds of {mode.waits} waits", flush=True
    )
    with tempfile.TemporaryDirectory() as folder:
        latency = wake_up_latency(dsn, mode, Path(folder))
    print(f"  all rounds: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms", flush=True)
    print(
        f"no-result cost: W2 drain of {mode.drain_jobs:,} jobs at C=100, against {args.baseline}", flush=True
    )
    with tempfile.TemporaryDirectory() as folder:
        cost = no_result_cost(dsn, mode, args.baseline, Path(folder))
    print(f"  this tree / baseline = {cost['ratio']:.3f}", flush=True)
    report = {
        "mode": mode.name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}",
        "database": args.database,
        "load_average": os.getloadavg(),
        "wake_up_latency": latency,
        "no_result_cost": cost,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"results-{stamp}-{mode.name}", f"results-latest-{mode.name}"):
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
