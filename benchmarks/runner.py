"""``python -m benchmarks``: measure every system side by side, one at a time, and write the report.

Each system is prepared first (its environment, its ``info``, its schema template); then the rows
are measured in rounds, one repeat of every system's rows per round, so slow drifts in the load of
this shared machine spread over all systems instead of landing on one.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from benchmarks import report as reporting
from benchmarks.adapters import Adapter, AdapterError
from benchmarks.database import Server, find_database_function
from benchmarks.environments import EnvironmentFailure, SystemSpec, discover_systems, ensure_env
from benchmarks.machine import describe
from benchmarks.workloads import Plan, RowSpec, SystemRun, measure, parse_workloads, plan_for, plan_rows

Json = dict[str, Any]
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full mode (default: quick, under 5 minutes)")
    parser.add_argument("--only", metavar="SYSTEM[,SYSTEM]", help="measure only these systems")
    parser.add_argument("--workloads", metavar="W1,W2,W3", help="workloads to run (default: all three)")
    parser.add_argument("--repeats", type=int, help="repeats per row (default 3; fewer is no valid result)")
    parser.add_argument("--list", action="store_true", help="list the systems found and exit")
    return parser.parse_args(argv)


def select_systems(only: str | None) -> list[SystemSpec]:
    specs = discover_systems()
    if not only:
        return specs
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {spec.name for spec in specs}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; found: {', '.join(sorted(known))}")
    return [spec for spec in specs if spec.name in wanted]


def prepare(spec: SystemSpec, server: Server, run_id: str) -> tuple[SystemRun | None, Json]:
    """Build the environment, ask the adapter about itself, install the schema; or say why not."""
    missing = spec.missing()
    if missing:
        return None, {"status": "skipped", "reason": missing}
    try:
        started = time.perf_counter()
        python = ensure_env(spec.name, spec.requirements, spec.python_request)
        log(f"{spec.name}: environment ready in {time.perf_counter() - started:.1f} s ({python})")
    except EnvironmentFailure as exc:
        return None, {"status": "skipped", "reason": f"cannot be installed: {exc}"}
    adapter = Adapter(spec, python)
    try:
        info = adapter.call({"action": "info"}, timeout_s=120)
    except AdapterError as exc:
        return None, {"status": "skipped", "reason": f"adapter does not start: {exc}"}
    run = SystemRun(adapter=adapter, info=info, server=server, run_id=run_id, log=log)
    try:
        run.template(0)
    except AdapterError as exc:
        run.drop_templates()
        return None, {"status": "skipped", "reason": f"schema installation failed: {exc}", "info": info}
    return run, {"status": "ok", "info": info}


def describe_result(row: RowSpec, measurement: Json) -> str:
    if "error" in measurement:
        return "FAILED: " + str(measurement["error"]).splitlines()[0][:200]
    parts = []
    if row.workload == "latency" and measurement.get("latency_ms"):
        lat = measurement["latency_ms"]
        parts.append(f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    elif measurement.get("jobs_per_s"):
        parts.append(f"{measurement['jobs_per_s']:,.0f} jobs/s")
    if measurement.get("xacts_per_job") is not None:
        parts.append(f"{measurement['xacts_per_job']:.2f} xacts/job")
    parts.append(f"{measurement.get('peak_rss_mb', 0):.0f} MB")
    parts.append("ok" if measurement.get("check", {}).get("ok") else "CHECK FAILED")
    return ", ".join(parts)


def run_rounds(runs: list[SystemRun], plan: Plan) -> dict[tuple[object, ...], tuple[RowSpec, list[Json]]]:
    rows = {run.name: plan_rows(run.name, run.info, plan) for run in runs}
    results: dict[tuple[object, ...], tuple[RowSpec, list[Json]]] = {}
    for run in runs:
        for row in rows[run.name]:
            results[row.key()] = (row, [])
    for repeat in range(1, plan.repeats + 1):
        # Each round starts with the next system, so no system always runs first or last.
        shift = (repeat - 1) % max(1, len(runs))
        for run in runs[shift:] + runs[:shift]:
            for row in rows[run.name]:
                measurement = measure(run, row, plan)
                measurement["repeat"] = repeat
                results[row.key()][1].append(measurement)
                log(f"r{repeat}/{plan.repeats} {row.label()}: {describe_result(row, measurement)}")
    return results


def ordered_rows(
    results: dict[tuple[object, ...], tuple[RowSpec, list[Json]]], order: list[str]
) -> list[Json]:
    by_workload: dict[str, list[Json]] = defaultdict(list)
    for row, measurements in results.values():
        by_workload[row.workload].append(reporting.row_record(row, measurements))
    out: list[Json] = []
    for workload in ("enqueue", "drain", "latency"):
        out += sorted(by_workload[workload], key=lambda r: order.index(r["system"]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = select_systems(args.only)
    if args.list:
        for spec in specs:
            print(f"{spec.name}\t{spec.missing() or 'ready'}")
        return 0
    try:
        workloads = parse_workloads(args.workloads) if args.workloads else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    plan = plan_for("full" if args.full else "quick", workloads)
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)

    found = find_database_function()()
    server = Server(found.dsn)
    run_id = secrets.token_hex(3)
    started = datetime.now(UTC)
    report: Json = {
        "mode": plan.mode,
        "run_id": run_id,
        "timestamp": started.strftime("%Y%m%dT%H%M%SZ"),
        "started_at": started.isoformat(timespec="seconds"),
        "plan": plan.describe(),
        "machine": describe(server, found.source),
        "systems": {},
        "notes": list(plan.notes),
        "rows": [],
    }
    pg = report["machine"]["postgresql_settings"]
    if pg.get("autovacuum") == "off":
        report["notes"].append(
            "autovacuum is off on this server: dead rows and index entries left by claims, acks and "
            "deletes are never cleaned during a run, so designs that update or delete many rows slow "
            "down as a backlog is worked through (each measurement starts from a fresh database)"
        )
    if plan.repeats < 3:
        report["notes"].append(f"only {plan.repeats} repeat(s) per row: not a valid result")
    log(f"{plan.mode} mode, run {run_id}, systems: {', '.join(s.name for s in specs)}")
    runs: list[SystemRun] = []
    try:
        for spec in specs:
            run, status = prepare(spec, server, run_id)
            report["systems"][spec.name] = status
            if run is None:
                log(f"{spec.name}: skipped: {status['reason'].splitlines()[0]}")
            else:
                runs.append(run)
        results = run_rounds(runs, plan)
        report["rows"] = ordered_rows(results, [spec.name for spec in specs])
    finally:
        for run in runs:
            run.drop_templates()
        server.drop_all()
        server.close()
    finished = datetime.now(UTC)
    report["finished_at"] = finished.isoformat(timespec="seconds")
    report["duration_s"] = (finished - started).total_seconds()
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    loads = [m["load1_before"] for r in report["rows"] for m in r["measurements"]]
    cores = report["machine"]["cpu_cores"] or 1
    if loads and max(loads) > cores:
        report["notes"].append(
            f"the machine was busy with other work: the 1-minute load average before a measurement "
            f"ranged {min(loads):.1f}-{max(loads):.1f} on {cores} cores (each measurement's is in the "
            "JSON as load1_before); wide min-max spreads come from that, compare medians"
        )
    bad = [r for r in report["rows"] if not r["summary"]["check"]["ok"]]
    report["notes"].append(
        "verification: every row's jobs were each executed exactly once and all completions were visible"
        if not bad
        else f"verification FAILED for {len(bad)} row(s): see the Check column"
    )
    paths = reporting.write(report)
    print(paths["md"].read_text())
    log(f"done in {report['duration_s']:.0f} s")
    return 0 if not bad else 1
