"""Flow control: what cluster-wide limits cost, whether they are exact, and whether they are fair.

Every node is a real ``python -m pgqueue start --config FILE`` process; every number comes from the
database's clock (``attempted_at``, ``completed_at`` and the marks the workers write).

1. **Drain cost** (W2's shape: a preloaded backlog of no-op jobs, one node at concurrency 100):
   the unlimited drain, then the same with ``global_limit = 100``, then with a rate limit set to
   1.5 x the unlimited rate, interleaved round by round in the same run; jobs/s from the first
   start to the last completion, and each limited drain as a fraction of the unlimited one.
2. **Exactness**: 4 nodes share ``global_limit = 3`` and ``rate_limit = 50 / 1 s`` over a backlog of
   jobs sleeping 5-25 ms: the most jobs ever running at once (from start/end marks), the most
   started in any 1 s window (sliding), and the achieved rate as a fraction of the limit.
3. **Fairness**: 1,000 tenants, one holding 90 % of the backlog and inserted first; a partitioned
   queue (``global_limit = 2`` per tenant): how long each tenant waits for its first job to start,
   against the same backlog in an unpartitioned queue.

    python -m benchmarks.flow [--full] [--only drain|exactness|fairness] [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgqueue
from benchmarks.flow_worker import Paced, Tenant
from pgqueue.localdb import find_database
from pgqueue.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = Path(__file__).resolve().parents[1]
SCHEMA = "bench_flow"
MARKS_DDL = (
    "CREATE TABLE flow_marks (job_id bigint PRIMARY KEY, started_at timestamptz, ended_at timestamptz)"
)


@dataclass(frozen=True)
class Mode:
    name: str
    drain_jobs: int
    drain_rounds: int
    exact_seconds: int
    tenants_jobs: int


QUICK = Mode("quick", drain_jobs=5_000, drain_rounds=2, exact_seconds=10, tenants_jobs=5_000)
FULL = Mode("full", drain_jobs=20_000, drain_rounds=3, exact_seconds=60, tenants_jobs=20_000)


def _q(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
        conn.execute(MARKS_DDL)


class Node:
    """One ``python -m pgqueue start`` process with a generated settings file."""

    def __init__(self, dsn: str, name: str, queues: dict[str, dict[str, Any]], folder: Path) -> None:
        lines = [
            f'schema = "{SCHEMA}"',
            f'node = "{name}"',
            'workers = ["benchmarks.flow_worker"]',
            "shutdown_grace = 1",
            "[queues]",
        ]
        for queue, options in queues.items():
            settings = ", ".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
            lines.append(f"{queue} = {{ {settings} }}")
        config = folder / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "PGQUEUE_BENCH_SCHEMA": SCHEMA,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgqueue", "start", "--config", str(config), "--log-level", "warning"],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _wait(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    done: Callable[[Any], bool],
    nodes: list[Node],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query).fetchone()
        if done(row[0] if row else None):
            return
        for node in nodes:
            if node.process.poll() is not None:
                error = node.process.stderr.read().decode()[-800:] if node.process.stderr else ""
                raise RuntimeError(f"a node exited: {error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {timeout:.0f} s (last: {row})")
        time.sleep(0.05)


# -- 1. drain cost -------------------------------------------------------------------------------


def _drain(dsn: str, jobs: int, options: dict[str, Any], folder: Path) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}, {}").format(_q("jobs"), _q("pgqueue_limit_state")))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker, queue, args) SELECT 'bench.FlowNoop', 'bench', "
                "jsonb_build_object('seq', g) FROM generate_series(1, %s) AS g"
            ).format(_q("jobs")),
            (jobs,),
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_q("jobs")))
        node = Node(dsn, "drain", {"bench": options}, folder)
        try:
            done = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(_q("jobs"))
            _wait(conn, done, lambda n: n == jobs, [node], 600)
        finally:
            node.stop()
        row = conn.execute(
            sql.SQL("SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM {}").format(
                _q("jobs")
            )
        ).fetchone()
    assert row is not None
    return jobs / float(row[0])


def drain_cost(dsn: str, mode: Mode, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"unlimited": [], "global_limit": [], "rate_limit": []}
    rate_limit = 0
    for round_ in range(mode.drain_rounds):
        rates["unlimited"].append(_drain(dsn, mode.drain_jobs, {"limit": 100}, folder))
        if round_ == 0:
            rate_limit = int(rates["unlimited"][0] * 1.5)
        rates["global_limit"].append(
            _drain(dsn, mode.drain_jobs, {"limit": 100, "global_limit": 100}, folder)
        )
        rates["rate_limit"].append(
            _drain(dsn, mode.drain_jobs, {"limit": 100, "rate_limit": rate_limit, "rate_period": 1.0}, folder)
        )
        log(f"drain round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    # Each round's limited drain against that round's unlimited one: steadier than the ratio of
    # medians when the machine's load drifts between rounds.
    paired = {
        name: statistics.median(v / u for v, u in zip(rates[name], rates["unlimited"], strict=True))
        for name in ("global_limit", "rate_limit")
    }
    log(
        "drain fraction of unlimited, median of per-round ratios: "
        + ", ".join(f"{k} {v:.0%}" for k, v in paired.items())
    )
    return {
        "jobs": mode.drain_jobs,
        "rounds": mode.drain_rounds,
        "rate_limit_set": rate_limit,
        "jobs_per_s": rates,
        "median_jobs_per_s": medians,
        "fraction_of_unlimited": {
            name: medians[name] / medians["unlimited"] for name in ("global_limit", "rate_limit")
        },
        "fraction_of_unlimited_per_round_median": paired,
    }


# -- 2. exactness --------------------------------------------------------------------------------


def max_concurrency(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def max_in_window(starts: Sequence[datetime], period: float) -> int:
    ordered = sorted(starts)
    peak = left = 0
    for right, at in enumerate(ordered):
        while (at - ordered[left]).total_seconds() >= period:
            left += 1
        peak = max(peak, right - left + 1)
    return peak


def exactness(dsn: str, mode: Mode, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    global_limit, rate, period, nodes_count = 3, 50, 1.0, 4
    rng = random.Random(16)
    jobs = [Paced.new({"ms": rng.randint(5, 25)}) for _ in range(int(rate * mode.exact_seconds * 1.3))]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {}, {}, {}").format(_q("jobs"), _q("pgqueue_limit_state"), _q("flow_marks"))
        )
        pgqueue.insert_all(conn, jobs, schema=SCHEMA)
        options = {"limit": 3, "global_limit": global_limit, "rate_limit": rate, "rate_period": period}
        nodes = [Node(dsn, f"exact-{i}", {"paced": options}, folder) for i in range(nodes_count)]
        try:
            first = sql.SQL("SELECT min(attempted_at) FROM {}").format(_q("jobs"))
            _wait(conn, first, lambda at: at is not None, nodes, 60)
            # the measured window: from the first start, for exact_seconds (the backlog outlasts it)
            since = sql.SQL(
                "SELECT extract(epoch FROM clock_timestamp() - min(attempted_at)) FROM {}"
            ).format(_q("jobs"))
            _wait(
                conn,
                since,
                lambda s: s is not None and float(s) >= mode.exact_seconds + 1,
                nodes,
                mode.exact_seconds + 60,
            )
        finally:
            for node in nodes:
                node.stop()
        start = conn.execute(first).fetchone()
        assert start is not None
        t0 = start[0]
        rows = conn.execute(
            sql.SQL("SELECT attempted_at, attempted_by[1] FROM {} WHERE attempted_at IS NOT NULL").format(
                _q("jobs")
            )
        ).fetchall()
        marks = conn.execute(
            sql.SQL("SELECT started_at, ended_at FROM {} WHERE ended_at IS NOT NULL").format(_q("flow_marks"))
        ).fetchall()
    starts = [at for at, _ in rows]
    in_window = [at for at in starts if (at - t0).total_seconds() < mode.exact_seconds]
    result = {
        "nodes": nodes_count,
        "global_limit": global_limit,
        "rate_limit": rate,
        "rate_period_s": period,
        "seconds": mode.exact_seconds,
        "jobs_started": len(starts),
        "started_by_node": {
            node: sum(1 for _, n in rows if n == node) for node in sorted({n for _, n in rows})
        },
        "max_concurrency": max_concurrency([(a, b) for a, b in marks]),
        "max_started_in_any_period": max_in_window(starts, period),
        "achieved_rate_fraction": len(in_window) / (rate * mode.exact_seconds),
    }
    log(f"exactness: {result}")
    return result


# -- 3. fairness ---------------------------------------------------------------------------------


def _tenant_waits(dsn: str, jobs: list[pgqueue.NewJob], options: dict[str, Any], folder: Path) -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {}, {}, {}").format(_q("jobs"), _q("pgqueue_limit_state"), _q("flow_marks"))
        )
        pgqueue.insert_all(conn, jobs, schema=SCHEMA)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_q("jobs")))
        tenants = len({job.args["tenant"] for job in jobs})
        node = Node(dsn, "fair", {"tenants": options}, folder)
        try:
            seen = sql.SQL(
                "SELECT count(DISTINCT args ->> 'tenant') FROM {} WHERE attempted_at IS NOT NULL"
            ).format(_q("jobs"))
            _wait(conn, seen, lambda n: n == tenants, [node], 900)
        finally:
            node.stop()
        # A job's start is its admission (attempted_at), by the database clock.
        rows = conn.execute(
            sql.SQL(
                "SELECT args ->> 'tenant', "
                "extract(epoch FROM min(attempted_at) - (SELECT min(attempted_at) FROM {jobs})) "
                "FROM {jobs} WHERE attempted_at IS NOT NULL GROUP BY 1"
            ).format(jobs=_q("jobs"))
        ).fetchall()
    return sorted(float(wait) for _, wait in rows)


def _distribution(waits: list[float]) -> dict[str, float]:
    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(p * len(waits)))]

    return {"p50_s": pct(0.5), "p90_s": pct(0.9), "p99_s": pct(0.99), "max_s": waits[-1]}


def fairness(dsn: str, mode: Mode, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    tenants, big_share = 1_000, 0.9
    big = int(mode.tenants_jobs * big_share)
    rest = mode.tenants_jobs - big
    jobs = [Tenant.new({"tenant": "t0000", "ms": 10}) for _ in range(big)]
    jobs += [Tenant.new({"tenant": f"t{1 + i % (tenants - 1):04d}", "ms": 10}) for i in range(rest)]
    partitioned = _tenant_waits(dsn, jobs, {"limit": 50, "global_limit": 2, "partitioned": True}, folder)
    log(f"fairness partitioned: {_distribution(partitioned)}")
    fifo = _tenant_waits(dsn, jobs, {"limit": 50}, folder)
    log(f"fairness unpartitioned: {_distribution(fifo)}")
    return {
        "tenants": tenants,
        "jobs": mode.tenants_jobs,
        "biggest_tenant_jobs": big,
        "first_start_partitioned": _distribution(partitioned),
        "first_start_unpartitioned": _distribution(fifo),
    }


# -- report --------------------------------------------------------------------------------------


def report(mode: Mode, drain: dict[str, Any], exact: dict[str, Any], fair: dict[str, Any]) -> str:
    med, frac = drain["median_jobs_per_s"], drain["fraction_of_unlimited"]
    p, f = fair["first_start_partitioned"], fair["first_start_unpartitioned"]
    lines = [
        f"# Flow control ({mode.name} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}; every node a `python -m pgqueue start "
        "--config` process; times from the database clock. See `benchmarks/flow.py`.",
        "",
        f"## Drain cost: {drain['jobs']:,} no-op jobs, one node at concurrency 100, median of "
        f"{drain['rounds']} interleaved rounds",
        "",
        "| Queue settings | jobs/s | of unlimited |",
        "|---|---|---|",
        f"| unlimited (limit 100) | {med['unlimited']:,.0f} | 100 % |",
        f"| global_limit 100 | {med['global_limit']:,.0f} | {frac['global_limit']:.0%} |",
        f"| rate_limit {drain['rate_limit_set']:,}/s (1.5 x unlimited) | {med['rate_limit']:,.0f} | "
        f"{frac['rate_limit']:.0%} |",
        "",
        f"## Exactness: {exact['nodes']} nodes, global_limit {exact['global_limit']}, rate_limit "
        f"{exact['rate_limit']}/{exact['rate_period_s']:g} s, {exact['seconds']} s",
        "",
        "| Max running at once | Max started in any 1 s (sliding) | Achieved rate / limit | Per node |",
        "|---|---|---|---|",
        f"| {exact['max_concurrency']} (limit {exact['global_limit']}) | "
        f"{exact['max_started_in_any_period']} (limit {exact['rate_limit']}) | "
        f"{exact['achieved_rate_fraction']:.1%} | "
        f"{', '.join(str(v) for v in exact['started_by_node'].values())} |",
        "",
        f"## Fairness: {fair['tenants']:,} tenants, {fair['jobs']:,} jobs, one tenant holding "
        f"{fair['biggest_tenant_jobs']:,} inserted first; 10 ms jobs, one node at concurrency 50",
        "",
        "Seconds from the first start until each tenant's first job starts:",
        "",
        "| Queue | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
        f"| partitioned by tenant, global_limit 2 each | {p['p50_s']:.2f} | {p['p90_s']:.2f} | "
        f"{p['p99_s']:.2f} | {p['max_s']:.2f} |",
        f"| unpartitioned (FIFO) | {f['p50_s']:.2f} | {f['p90_s']:.2f} | {f['p99_s']:.2f} | "
        f"{f['max_s']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flow")
    parser.add_argument("--full", action="store_true", help="full mode (default: quick)")
    parser.add_argument(
        "--only", choices=["drain", "exactness", "fairness"], help="one part only (not saved)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved drain rounds (default: 2 quick, 3 full)")
    args = parser.parse_args(argv)
    mode = FULL if args.full else QUICK
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be 1 or more")
        mode = dataclasses.replace(mode, drain_rounds=args.rounds)
    dsn = find_database().dsn

    def log(message: str) -> None:
        print(f"[flow] {message}", file=sys.stderr, flush=True)

    _reset(dsn)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if args.only:
                part = {"drain": drain_cost, "exactness": exactness, "fairness": fairness}[args.only]
                print(json.dumps(part(dsn, mode, folder, log), indent=2, default=str))
                return 0
            drain = drain_cost(dsn, mode, folder, log)
            exact = exactness(dsn, mode, folder, log)
            fair = fairness(dsn, mode, folder, log)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    markdown = report(mode, drain, exact, fair)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = {"mode": mode.name, "drain": drain, "exactness": exact, "fairness": fair}
    for name in (f"flow-{stamp}-{mode.name}", f"flow-latest-{mode.name}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
