"""The three workloads and the plan of rows each system gets in quick and full mode.

W1 ``enqueue``: N jobs, one per transaction, and bulk inserts; jobs/s timed inside the adapter.
W2 ``drain``: a backlog of pre-inserted jobs; jobs/s from the first perform to the poll that sees
the last completion in the database.
W3 ``latency``: an idle worker, jobs inserted one at a time at a fixed interval; latency from the
inserting transaction's commit to the start of the job's perform.

Every measurement runs in a database of its own, cloned from a template into which the system's
own installer put its schema (and, for W2, the backlog), and dropped afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks.adapters import Adapter, AdapterError, Running
from benchmarks.database import Poller, Server
from benchmarks.metrics import MIB, ProcessSampler, check_executions, latency_summary

Json = dict[str, Any]
WORKLOADS = ("enqueue", "drain", "latency")
ALIASES = {"w1": "enqueue", "w2": "drain", "w3": "latency"}
# After the last completion is visible: time for a late duplicate execution to show up.
GRACE_S = 0.2


@dataclass(frozen=True)
class Plan:
    mode: str
    repeats: int
    enqueue_single: int
    enqueue_bulk: tuple[int, ...]
    drain_jobs: int
    drain_concurrency: tuple[int, ...]
    drain_processes: tuple[int, ...]
    latency_jobs: int
    latency_interval_ms: int
    latency_concurrency: int
    poll_interval_s: float
    settle_s: float
    workloads: tuple[str, ...] = WORKLOADS
    notes: tuple[str, ...] = ()

    def describe(self) -> Json:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


QUICK = Plan(
    mode="quick",
    repeats=3,
    enqueue_single=500,
    enqueue_bulk=(10_000,),
    drain_jobs=2_000,
    drain_concurrency=(10, 100),
    drain_processes=(1,),
    latency_jobs=70,
    latency_interval_ms=20,
    latency_concurrency=10,
    poll_interval_s=0.01,
    settle_s=0.5,
    notes=(
        "quick mode: W2 drains 2,000 pre-inserted jobs per measurement instead of 20,000, and W3 "
        "inserts 70 jobs per repeat (210 in all), to stay within the 5-minute budget. Short drains "
        "favour systems that write completions at once (chancy flushes them every 1 s) and make the "
        "fastest rows resolution-limited (10 ms polls)",
        "quick mode: W1 one-job-per-transaction uses N=500 (full: 10,000) and bulk 10,000 only "
        "(full: also 100,000); W2 runs one worker process (full: also two)",
    ),
)

FULL = Plan(
    mode="full",
    repeats=3,
    enqueue_single=10_000,
    enqueue_bulk=(10_000, 100_000),
    drain_jobs=20_000,
    drain_concurrency=(10, 100),
    drain_processes=(1, 2),
    latency_jobs=1_000,
    latency_interval_ms=20,
    latency_concurrency=10,
    poll_interval_s=0.05,
    settle_s=0.5,
)


def plan_for(mode: str, workloads: tuple[str, ...] | None) -> Plan:
    plan = FULL if mode == "full" else QUICK
    return replace(plan, workloads=workloads) if workloads else plan


def parse_workloads(text: str) -> tuple[str, ...]:
    chosen: list[str] = []
    for item in (part.strip().lower() for part in text.split(",") if part.strip()):
        name = ALIASES.get(item, item)
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {item!r}: choose from W1, W2, W3 ({', '.join(WORKLOADS)})")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError("no workload given")
    return tuple(chosen)


@dataclass(frozen=True)
class RowSpec:
    """One line of a result table: a system, a workload and its parameters."""

    workload: str
    system: str
    variant: str
    settings: str
    jobs: int
    concurrency: int | None = None
    processes: int = 1

    def key(self) -> tuple[object, ...]:
        return (self.workload, self.system, self.variant, self.jobs, self.concurrency, self.processes)

    def label(self) -> str:
        parts = [self.workload, self.system, self.variant, f"n={self.jobs}"]
        if self.concurrency is not None:
            parts.append(f"c={self.concurrency}")
        if self.processes > 1:
            parts.append(f"procs={self.processes}")
        return " ".join(parts)


def plan_rows(system: str, info: Json, plan: Plan) -> list[RowSpec]:
    rows: list[RowSpec] = []
    if "enqueue" in plan.workloads:
        for mode in info["enqueue_modes"]:
            counts = plan.enqueue_bulk if mode["bulk"] else (plan.enqueue_single,)
            rows += [RowSpec("enqueue", system, mode["name"], mode["description"], n) for n in counts]
    if "drain" in plan.workloads:
        for variant in info["variants"]:
            levels: tuple[int | None, ...] = plan.drain_concurrency if variant["scales"] else (None,)
            for procs in plan.drain_processes:
                rows += [
                    RowSpec("drain", system, variant["name"], variant["settings"], plan.drain_jobs, c, procs)
                    for c in levels
                ]
    if "latency" in plan.workloads:
        name = info["latency_variant"]
        variant = next(v for v in info["variants"] if v["name"] == name)
        concurrency = plan.latency_concurrency if variant["scales"] else None
        rows.append(RowSpec("latency", system, name, variant["settings"], plan.latency_jobs, concurrency))
    return rows


@dataclass
class SystemRun:
    """A system under test: its adapter, what it said about itself, and its template databases."""

    adapter: Adapter
    info: Json
    server: Server
    run_id: str
    log: Callable[[str], None]
    templates: dict[int, str] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def name(self) -> str:
        return self.adapter.spec.name

    def db_name(self, suffix: str) -> str:
        return f"bench_{self.name}_{self.run_id}_{suffix}"

    def template(self, preload: int) -> str:
        """A database with the system's schema (and ``preload`` jobs), installed by its adapter."""
        if preload not in self.templates:
            name = self.db_name(f"tpl{preload}")
            dsn = self.server.create(name)
            task: Json = {"action": "setup", "dsn": dsn}
            if preload:
                task["preload"] = {"count": preload, "mode": "bulk"}
            started = time.perf_counter()
            self.adapter.call(task, timeout_s=900)
            self.server.wait_idle(name)
            self.log(
                f"{self.name}: schema{f' + {preload:,} jobs' if preload else ''} installed "
                f"in {time.perf_counter() - started:.1f} s"
            )
            self.templates[preload] = name
        return self.templates[preload]

    def fresh(self, preload: int) -> tuple[str, str]:
        """A new database cloned from the template; returns (name, dsn)."""
        template = self.template(preload)
        name = self.db_name(str(next(self.counter)))
        return name, self.server.create(name, template=template)

    def drop_templates(self) -> None:
        for name in self.templates.values():
            self.server.drop(name)
        self.templates.clear()

    @property
    def done_sql(self) -> str:
        return str(self.info["sql"]["done"])

    @property
    def total_sql(self) -> str:
        return str(self.info["sql"]["total"])


def _finish_counts(run: SystemRun, name: str, before: int, poller_transactions: int, jobs: int) -> Json:
    run.server.wait_idle(name)
    transactions = run.server.transactions(name) - before - poller_transactions
    return {"transactions": transactions, "xacts_per_job": transactions / jobs if jobs else None}


def measure_enqueue(run: SystemRun, row: RowSpec, plan: Plan) -> Json:
    name, dsn = run.fresh(0)
    try:
        before = run.server.transactions(name)
        sampler = ProcessSampler()
        proc = run.adapter.start({"action": "enqueue", "dsn": dsn, "mode": row.variant, "count": row.jobs})
        sampler.watch(proc.pid)
        try:
            result = proc.finish(timeout_s=60 + row.jobs / 50)
        finally:
            sampler.stop()
            proc.kill()
        run.server.wait_idle(name)
        with run.server.poller(name) as poller:
            in_db = poller.count(run.total_sql)
            used = poller.transactions
        seconds = float(result["seconds"])
        out: Json = {
            "jobs": row.jobs,
            "seconds": seconds,
            "jobs_per_s": row.jobs / seconds if seconds > 0 else None,
            "peak_rss_mb": sampler.peak_rss / MIB,
            "cpu_s": sampler.cpu_seconds,
            "check": {
                "expected": row.jobs,
                "in_db": in_db,
                "lost": row.jobs - in_db,
                "ok": in_db == row.jobs,
            },
        }
        out.update(_finish_counts(run, name, before, used, row.jobs))
        return out
    finally:
        run.server.drop(name)


def _poll_until(
    poller: Poller, sql: str, target: int, deadline: float, interval_s: float, workers: list[Running]
) -> tuple[int, float | None]:
    """Poll ``sql`` until it reaches ``target``; return (last count, time the final poll was issued)."""
    done = 0
    while time.monotonic() < deadline:
        issued = time.time()
        done = poller.count(sql)
        if done >= target:
            return done, issued
        if any(w.proc.poll() is not None for w in workers):
            return done, None
        time.sleep(interval_s)
    return done, None


def _stop_all(workers: list[Running]) -> list[Json]:
    results: list[Json] = []
    errors: list[str] = []
    for worker in workers:
        worker.request_stop()
    for worker in workers:
        try:
            results.append(worker.finish(timeout_s=60))
        except AdapterError as exc:
            errors.append(str(exc))
    if errors:
        raise AdapterError("; ".join(errors))
    return results


def measure_drain(run: SystemRun, row: RowSpec, plan: Plan) -> Json:
    name, dsn = run.fresh(row.jobs)
    workers: list[Running] = []
    sampler = ProcessSampler()
    try:
        before = run.server.transactions(name)
        task = {"action": "work", "dsn": dsn, "variant": row.variant, "concurrency": row.concurrency}
        with run.server.poller(name) as poller:
            for _ in range(row.processes):
                workers.append(run.adapter.start(task))
                sampler.watch(workers[-1].pid)
            for worker in workers:
                worker.wait_ready(timeout_s=120)
            deadline = time.monotonic() + 30 + row.jobs / 100
            done, t_done = _poll_until(
                poller, run.done_sql, row.jobs, deadline, plan.poll_interval_s, workers
            )
            time.sleep(GRACE_S)
            results = _stop_all(workers)
            done_after = poller.count(run.done_sql)
            used = poller.transactions
        sampler.stop()
        executions = [seq for result in results for seq in result["executions"]]
        starts = [float(r["first_start"]) for r in results if r["first_start"] is not None]
        first_start = min(starts) if starts else None
        seconds = t_done - first_start if t_done is not None and first_start is not None else None
        out: Json = {
            "jobs": row.jobs,
            "seconds": seconds,
            "jobs_per_s": row.jobs / seconds if seconds else None,
            "peak_rss_mb": sampler.peak_rss / MIB,
            "cpu_s": sampler.cpu_seconds,
            "check": check_executions(row.jobs, executions, max(done, done_after)),
        }
        if t_done is None:
            out["error"] = f"only {done:,} of {row.jobs:,} completions visible before the deadline"
        out.update(_finish_counts(run, name, before, used, row.jobs))
        return out
    finally:
        sampler.stop()
        for worker in workers:
            worker.kill()
        run.server.drop(name)


def measure_latency(run: SystemRun, row: RowSpec, plan: Plan) -> Json:
    name, dsn = run.fresh(0)
    worker: Running | None = None
    producer: Running | None = None
    sampler = ProcessSampler()
    try:
        before = run.server.transactions(name)
        with run.server.poller(name) as poller:
            worker = run.adapter.start(
                {
                    "action": "work",
                    "dsn": dsn,
                    "variant": row.variant,
                    "concurrency": row.concurrency,
                    "record_starts": True,
                }
            )
            sampler.watch(worker.pid)
            worker.wait_ready(timeout_s=120)
            time.sleep(plan.settle_s)  # the worker is idle and listening before the first insert
            producer = run.adapter.start(
                {
                    "action": "enqueue",
                    "dsn": dsn,
                    "mode": "single",
                    "count": row.jobs,
                    "interval_ms": plan.latency_interval_ms,
                }
            )
            produced = producer.finish(timeout_s=60 + row.jobs * plan.latency_interval_ms / 250)
            deadline = time.monotonic() + 30
            done, _ = _poll_until(poller, run.done_sql, row.jobs, deadline, plan.poll_interval_s, [worker])
            time.sleep(GRACE_S)
            (result,) = _stop_all([worker])
            done_after = poller.count(run.done_sql)
            used = poller.transactions
        sampler.stop()
        commits = {int(seq): float(t) for seq, t in produced["commits"]}
        first_start: dict[int, float] = {}
        for seq, t in result["starts"]:
            first_start.setdefault(int(seq), float(t))
        latencies = [t - commits[seq] for seq, t in first_start.items() if seq in commits]
        span = max(first_start.values(), default=0.0) - min(commits.values(), default=0.0)
        out: Json = {
            "jobs": row.jobs,
            "seconds": span,
            "jobs_per_s": row.jobs / span if span > 0 else None,
            "peak_rss_mb": sampler.peak_rss / MIB,
            "cpu_s": sampler.cpu_seconds,
            "latency_ms": latency_summary(latencies),
            "latencies_ms": [round(v * 1000, 3) for v in latencies],
            "check": check_executions(row.jobs, result["executions"], max(done, done_after)),
        }
        out.update(_finish_counts(run, name, before, used, row.jobs))
        return out
    finally:
        sampler.stop()
        for proc in (worker, producer):
            if proc is not None:
                proc.kill()
        run.server.drop(name)


MEASURE: dict[str, Callable[[SystemRun, RowSpec, Plan], Json]] = {
    "enqueue": measure_enqueue,
    "drain": measure_drain,
    "latency": measure_latency,
}


def measure(run: SystemRun, row: RowSpec, plan: Plan) -> Json:
    """One repetition of one row; failures are recorded, not raised."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        out = MEASURE[row.workload](run, row, plan)
    except AdapterError as exc:
        out = {"jobs": row.jobs, "error": str(exc)}
    out["load1_before"] = load
    out["wall_s"] = time.perf_counter() - started
    return out
