"""Workflows: what dependencies cost a drain.

One root job, N no-op jobs that each depend on it (the fan-out) and one job that depends on all N
(the fan-in), drained by one ``python -m pgqueue start`` node at concurrency 100; against the
same N + 2 no-op jobs inserted without dependencies (with and without the workflow triggers),
drained the same way. Each round runs the three drains back to back, in alternating order, so a
round's drains share the machine's load. Throughput is jobs/s from the first start to the last
completion, by the database clock (``attempted_at``, ``completed_at``); the median of each
round's workflow/plain ratio is the number to watch (target: at least 70 %). Beside it, the CPU
per job of the node's processes and its client backends, read from the operating system, which
moves far less with the load of a shared machine than elapsed time does.

    python -m benchmarks.workflows [--full] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
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

import psutil
import psycopg
from psycopg import sql

import pgqueue
from benchmarks.workflow_worker import Step
from pgqueue.localdb import find_database
from pgqueue.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = Path(__file__).resolve().parents[1]
SCHEMA = "bench_workflows"


@dataclass(frozen=True)
class Mode:
    name: str
    fan_out: int
    rounds: int


QUICK = Mode("quick", fan_out=10_000, rounds=3)
FULL = Mode("full", fan_out=10_000, rounds=9)


def _q(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA)


def _node(dsn: str, folder: Path) -> subprocess.Popen[bytes]:
    config = folder / "node.toml"
    config.write_text(
        f'schema = "{SCHEMA}"\nnode = "bench"\nworkers = ["benchmarks.workflow_worker"]\n'
        "shutdown_grace = 1\n[queues]\nbench = { limit = 100 }\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pgqueue", "start", "--config", str(config), "--log-level", "warning"],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _insert(conn: psycopg.Connection[Any], fan_out: int, workflow: bool) -> None:
    if not workflow:
        pgqueue.insert_all(conn, [Step.new({"i": i}) for i in range(fan_out + 2)], schema=SCHEMA)
        return
    flow = pgqueue.Workflow("bench")
    root = flow.add("root", Step.new({"i": 0}))
    parts = [flow.add(f"part-{i}", Step.new({"i": i}), deps=[root]) for i in range(fan_out)]
    flow.add("join", Step.new({"i": fan_out + 1}), deps=parts)
    pgqueue.insert_workflow(conn, flow, schema=SCHEMA)


_TRIGGERS = ("jobs_workflow_finished", "jobs_workflow_deleted")


def _set_triggers(conn: psycopg.Connection[Any], enabled: bool) -> None:
    action = sql.SQL("ENABLE" if enabled else "DISABLE")
    for name in _TRIGGERS:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(_q("jobs"), action, sql.Identifier(name)))


def _cpu(conn: psycopg.Connection[Any], node: subprocess.Popen[bytes]) -> dict[int, tuple[bool, float]]:
    """CPU seconds used so far by the node's processes and by every other client backend of this
    database (the node's connections), by pid, marked True for the database's. Read from the
    operating system: the work done, which moves far less with the machine's load than time."""
    row = conn.execute(
        "SELECT array_agg(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchone()
    root = psutil.Process(node.pid)
    processes = [(False, root), *((False, child) for child in root.children(recursive=True))]
    for pid in row[0] if row and row[0] else []:
        if psutil.pid_exists(pid):
            processes.append((True, psutil.Process(pid)))
    times: dict[int, tuple[bool, float]] = {}
    for database, process in processes:
        try:
            used = process.cpu_times()
        except psutil.Error:
            continue
        times[process.pid] = (database, used.user + used.system)
    return times


def _drain(dsn: str, fan_out: int, workflow: bool, folder: Path, triggers: bool = True) -> dict[str, float]:
    total = fan_out + 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(_q("jobs")))
        conn.execute(sql.SQL("TRUNCATE {}").format(_q("pgqueue_workflow_deps")))
        conn.execute(sql.SQL("DELETE FROM {}").format(_q("pgqueue_producers")))
        _set_triggers(conn, triggers)
        started = time.perf_counter()
        with conn.transaction():
            _insert(conn, fan_out, workflow)
        insert_s = time.perf_counter() - started
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_q("jobs")))
        node = _node(dsn, folder)
        try:
            # from the moment its producer registered: the node's start (imports, connections)
            # is the same for every configuration and not what is compared
            started = sql.SQL("SELECT count(*) FROM {}").format(_q("pgqueue_producers"))
            _wait(conn, started, 1, node)
            before = _cpu(conn, node)
            done = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(_q("jobs"))
            _wait(conn, done, total, node)
            after = _cpu(conn, node)
        finally:
            node.terminate()
            node.wait(30)
            _set_triggers(conn, True)
        row = conn.execute(
            sql.SQL("SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM {}").format(
                _q("jobs")
            )
        ).fetchone()
        phases = _phases(conn) if workflow else {}
    assert row is not None
    spent = [
        (database, used - before.get(pid, (database, 0.0))[1]) for pid, (database, used) in after.items()
    ]
    db_s = sum(used for database, used in spent if database)
    node_s = sum(used for database, used in spent if not database)
    return {
        "jobs_per_s": total / float(row[0]),
        "insert_s": insert_s,
        "cpu_us_per_job": (db_s + node_s) / total * 1e6,
        "db_cpu_us_per_job": db_s / total * 1e6,
        **phases,
    }


def _wait(
    conn: psycopg.Connection[Any], count: sql.Composable, target: int, node: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 600
    while (row := conn.execute(count).fetchone()) is None or row[0] < target:
        if node.poll() is not None:
            error = node.stderr.read().decode()[-800:] if node.stderr else ""
            raise RuntimeError(f"the node exited: {error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not there within 600 s ({row} of {target})")
        time.sleep(0.01)


def _phases(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """Where a workflow drain's time goes, by the database clock: the root's run and ack (whose
    statement releases the parts), the parts' drain, and the fan-in's release and run. Fails the
    run if the fan-in started before every part completed."""
    row = conn.execute(
        sql.SQL(
            "WITH s AS (SELECT meta -> 'workflow' ->> 'step' AS step, attempted_at AS a,"
            " completed_at AS c FROM {j}),"
            " r AS (SELECT a, c FROM s WHERE step = 'root'), f AS (SELECT a, c FROM s WHERE step = 'join')"
            " SELECT extract(epoch FROM (SELECT c - a FROM r)),"
            " extract(epoch FROM min(s.a) - (SELECT c FROM r)),"
            " extract(epoch FROM max(s.c) - min(s.a)), count(*),"
            " extract(epoch FROM (SELECT a FROM f) - max(s.c)),"
            " extract(epoch FROM (SELECT c - a FROM f))"
            " FROM s WHERE step LIKE 'part-%%'"
        ).format(j=_q("jobs"))
    ).fetchone()
    assert row is not None
    assert None not in row
    root_run, to_parts, parts_s, parts, to_join, join_run = (float(v) for v in row)
    if to_join < 0:
        raise RuntimeError("the join started before every part had completed")
    return {
        "root_run_s": root_run,
        "root_to_parts_s": to_parts,
        "parts_jobs_per_s": parts / parts_s,
        "parts_to_join_s": to_join,
        "join_run_s": join_run,
    }


_NAMES = ("plain", "plain_no_triggers", "workflow")


def run(dsn: str, mode: Mode, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in _NAMES}
    inserts: dict[str, list[float]] = {name: [] for name in _NAMES}
    cpu: dict[str, list[float]] = {name: [] for name in _NAMES}
    db_cpu: dict[str, list[float]] = {name: [] for name in _NAMES}
    phases: dict[str, list[float]] = {}
    for round_ in range(mode.rounds):
        # alternate the order too, so no configuration always runs on the heels of the same one
        for name in _NAMES if round_ % 2 == 0 else tuple(reversed(_NAMES)):
            measured = _drain(
                dsn, mode.fan_out, name == "workflow", folder, triggers=name != "plain_no_triggers"
            )
            rates[name].append(measured.pop("jobs_per_s"))
            inserts[name].append(measured.pop("insert_s"))
            cpu[name].append(measured.pop("cpu_us_per_job"))
            db_cpu[name].append(measured.pop("db_cpu_us_per_job"))
            for key, value in measured.items():
                phases.setdefault(key, []).append(value)
        log(
            f"round {round_ + 1}: "
            + ", ".join(f"{k} {v[-1]:,.0f} jobs/s" for k, v in rates.items())
            + f" (workflow {rates['workflow'][-1] / rates['plain'][-1]:.0%} of plain); CPU/job "
            + ", ".join(f"{k} {v[-1]:,.0f} us" for k, v in cpu.items())
        )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    # the ratio of each round's pair, run back to back on the same machine: the machine's drift
    # between rounds cancels out of it, which it does not out of a ratio of two medians
    ratios = [w / p for w, p in zip(rates["workflow"], rates["plain"], strict=True)]
    trigger_ratios = [p / n for p, n in zip(rates["plain"], rates["plain_no_triggers"], strict=True)]
    # plain's CPU per job over the workflow's: the throughput ratio a node bound by CPU would see
    cpu_ratios = [p / w for w, p in zip(cpu["workflow"], cpu["plain"], strict=True)]
    return {
        "jobs": mode.fan_out + 2,
        "rounds": mode.rounds,
        "jobs_per_s": rates,
        "insert_s": inserts,
        "median_jobs_per_s": medians,
        "median_insert_s": {name: statistics.median(values) for name, values in inserts.items()},
        "workflow_fraction_per_round": ratios,
        "workflow_fraction_of_plain": statistics.median(ratios),
        "plain_fraction_of_no_triggers_per_round": trigger_ratios,
        "plain_fraction_of_no_triggers": statistics.median(trigger_ratios),
        "cpu_us_per_job": cpu,
        "median_cpu_us_per_job": {name: statistics.median(values) for name, values in cpu.items()},
        "db_cpu_us_per_job": db_cpu,
        "median_db_cpu_us_per_job": {name: statistics.median(values) for name, values in db_cpu.items()},
        "workflow_cpu_fraction_per_round": cpu_ratios,
        "workflow_cpu_fraction_of_plain": statistics.median(cpu_ratios),
        "workflow_phases": phases,
        "median_workflow_phases": {key: statistics.median(values) for key, values in phases.items()},
    }


def report(mode: Mode, result: dict[str, Any]) -> str:
    med, ins = result["median_jobs_per_s"], result["median_insert_s"]
    ratios = result["workflow_fraction_per_round"]
    phases = result["median_workflow_phases"]
    cpu, cpu_ratios = result["median_cpu_us_per_job"], result["workflow_cpu_fraction_per_round"]
    db = result["median_db_cpu_us_per_job"]
    return "\n".join(
        [
            f"# Workflows ({mode.name} mode)",
            "",
            f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}: 1 root, {mode.fan_out:,} steps "
            f"depending on it, 1 step depending on all of them ({result['jobs']:,} no-op jobs), against "
            f"the same jobs without dependencies; one `python -m pgqueue start` node at concurrency 100; "
            f"{result['rounds']} rounds, each running the three drains back to back (in alternating "
            "order); times from the database clock. See `benchmarks/workflows.py`.",
            "",
            f"**Workflow throughput: {result['workflow_fraction_of_plain']:.0%} of plain** (the median "
            f"of each round's workflow/plain ratio; rounds ranged {min(ratios):.0%}-{max(ratios):.0%}: "
            + ", ".join(f"{r:.0%}" for r in ratios)
            + ").",
            "",
            f"**By CPU: {result['workflow_cpu_fraction_of_plain']:.0%} of plain** (plain's CPU per job over "
            "the workflow's, per round, median: the node's processes and its client backends, from the "
            "moment its producer registered to the last completion, read from the operating system; "
            "it moves far less with the machine's load than elapsed time; rounds ranged "
            f"{min(cpu_ratios):.0%}-{max(cpu_ratios):.0%}: "
            + ", ".join(f"{r:.0%}" for r in cpu_ratios)
            + ").",
            "",
            "| Jobs | median jobs/s | of plain (median of rounds) | median CPU per job, µs "
            "(of it, database) | median insert (s) |",
            "|---|---|---|---|---|",
            f"| plain, no dependencies | {med['plain']:,.0f} | 100 % | {cpu['plain']:,.0f} "
            f"({db['plain']:,.0f}) | {ins['plain']:.2f} |",
            f"| plain, workflow triggers disabled | {med['plain_no_triggers']:,.0f} | "
            f"{1 / result['plain_fraction_of_no_triggers']:.0%} | {cpu['plain_no_triggers']:,.0f} "
            f"({db['plain_no_triggers']:,.0f}) | {ins['plain_no_triggers']:.2f} |",
            f"| fan-out then fan-in workflow | {med['workflow']:,.0f} | "
            f"{result['workflow_fraction_of_plain']:.0%} | {cpu['workflow']:,.0f} ({db['workflow']:,.0f}) "
            f"| {ins['workflow']:.2f} |",
            "",
            "Where the workflow's time goes (medians): the root runs and its ack releases the parts "
            f"in {phases['root_run_s']:.3f} s; {phases['root_to_parts_s']:.3f} s later the first part "
            f"starts; the parts drain at {phases['parts_jobs_per_s']:,.0f} jobs/s; the fan-in step starts "
            f"{phases['parts_to_join_s']:.3f} s after the last part completed and runs in "
            f"{phases['join_run_s']:.3f} s.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workflows")
    parser.add_argument("--full", action="store_true", help="full mode (default: quick)")
    parser.add_argument("--rounds", type=int, help="rounds to run (default: quick 3, full 9)")
    args = parser.parse_args(argv)
    mode = FULL if args.full else QUICK
    if args.rounds is not None:
        mode = Mode(mode.name, mode.fan_out, max(1, args.rounds))
    dsn = find_database().dsn

    def log(message: str) -> None:
        print(f"[workflows] {message}", file=sys.stderr, flush=True)

    _reset(dsn)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(dsn, mode, Path(tmp), log)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    markdown = report(mode, result)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"workflows-{stamp}-{mode.name}", f"workflows-latest-{mode.name}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps({"mode": mode.name, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
