"""The cost curve's upkeep measurements (see ``benchmarks.cost_curve``): pruning a large completed
backlog beside a fetch loop, and an ``idle in transaction`` session pinning the xmin horizon.

While the pruner runs, a side connection samples the fetch loop's backend every few milliseconds
in ``pg_stat_activity``: the longest run of samples in which it waited on a heavyweight lock
(``wait_event_type = 'Lock'``) is the longest time the pruner blocked a fetch; waits on buffer
content locks (``LWLock``) are recorded apart, as are the fetches' own latencies.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import anyio
import psycopg
from psycopg import sql

from benchmarks.cost_table import BESIDE, JOBS, PRODUCER, QUEUE, SCHEMA, WORKERS, fill, reset, sizes
from pgqueue.executor import fetch_params
from pgqueue.runtime import Runtime
from pgqueue.store import queries_for

VACUUM_EVERY = 10.0  # seconds between the pinned-xmin run's VACUUMs


class _FetchProbe(threading.Thread):
    """Fetches (claim 10, rolled back) in a loop, recording each one's latency."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.times = dsn, threading.Event(), list[float]()
        self.pid = 0
        self.connected = threading.Event()

    def run(self) -> None:
        statement = queries_for(SCHEMA).fetch_jobs
        params = fetch_params([], queue=QUEUE, demand=10, node="probe", producer=PRODUCER)
        with psycopg.connect(self.dsn) as conn:
            self.pid = conn.info.backend_pid
            self.connected.set()
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute(statement, params).fetchall()
                self.times.append((time.perf_counter() - started) * 1000)
                conn.rollback()
                time.sleep(0.005)


class _WaitWatch(threading.Thread):
    """Samples one backend's wait event every ``every`` seconds; keeps, per wait event type, the
    longest run of consecutive samples spent waiting (from its first sample to the first sample
    after it), and which wait event and which blocking backends it was."""

    def __init__(self, dsn: str, pid: int, every: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.dsn, self.pid, self.every, self.stop = dsn, pid, every, threading.Event()
        self.longest: dict[str, dict[str, Any]] = {}
        self.samples = 0

    def run(self) -> None:
        query = (
            "SELECT wait_event_type, wait_event, pg_blocking_pids(pid)"
            " FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
        )
        current: tuple[str, str, float, set[int]] | None = None
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(query, [self.pid]).fetchone()
                now = time.perf_counter()
                self.samples += 1
                kind = row[0] if row is not None and row[0] not in (None, "Client") else None
                if current is not None and (kind is None or kind != current[0]):
                    self._close(current, now)
                    current = None
                if kind is not None and row is not None:
                    if current is None:
                        current = (kind, str(row[1]), now, set(row[2] or []))
                    else:
                        current[3].update(row[2] or [])
                time.sleep(self.every)
            if current is not None:
                self._close(current, time.perf_counter())

    def _close(self, run: tuple[str, str, float, set[int]], end: float) -> None:
        kind, event, start, blockers = run
        ms = (end - start) * 1000
        if ms > self.longest.get(kind, {}).get("ms", -1.0):
            self.longest[kind] = {"ms": ms, "event": event, "blockers": sorted(blockers)}


def measure_prune(dsn: str, completed: int, *, reuse: bool) -> dict[str, Any]:
    """``reuse``: the table still holds the last point's completed backlog; top up the waiting jobs."""
    if reuse:
        fill(dsn, available=BESIDE)
    else:
        reset(dsn)
        fill(dsn, available=BESIDE, completed=completed)
    statement = queries_for(SCHEMA).prune_jobs
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = sizes(conn)
        probe = _FetchProbe(dsn)
        probe.start()
        probe.connected.wait(10)
        time.sleep(2)
        baseline = list(probe.times)
        watch = _WaitWatch(dsn, probe.pid)
        watch.start()
        started, deleted, batches, longest_batch = time.perf_counter(), 0, 0, 0.0
        while True:
            batch_started = time.perf_counter()
            n = len(conn.execute(statement, {"max_age": 60, "limit": 10_000}).fetchall())
            longest_batch = max(longest_batch, time.perf_counter() - batch_started)
            deleted, batches = deleted + n, batches + 1
            if n == 0:
                break
        elapsed = time.perf_counter() - started
        watch.stop.set()
        watch.join()
        probe.stop.set()
        probe.join()
        pruner = conn.info.backend_pid
        during = probe.times[len(baseline) :]
        after = sizes(conn)
        conn.execute(sql.SQL("VACUUM {}").format(JOBS))
        vacuumed = sizes(conn)
    result = {
        "completed": completed,
        "deleted": deleted,
        "batches": batches,
        "rows_s": deleted / elapsed,
        "longest_batch_ms": longest_batch * 1000,
        "before": before,
        "after_prune": after,
        "after_vacuum": vacuumed,
        "fetch_baseline_max_ms": max(baseline),
        "fetch_during_max_ms": max(during),
        "fetch_during_p99_ms": sorted(during)[int(len(during) * 0.99) - 1],
        "fetches_during": len(during),
        "wait_samples": watch.samples,
        # the longest the fetch loop waited, per wait event type, and whether the pruner blocked it
        "fetch_waits": {
            kind: {**w, "by_pruner": pruner in w["blockers"]} for kind, w in watch.longest.items()
        },
    }
    print(f"  prune: {result}")
    return result


def measure_pinned_xmin(dsn: str, *, hold: float, window: float = 5.0) -> dict[str, Any]:
    """Steady load (the backlog topped up to 20,000) while one session sits idle in transaction."""
    reset(dsn)
    fill(dsn, available=BESIDE)
    top_up = sql.SQL(
        "INSERT INTO {} (queue, worker, args) SELECT %s, 'bench.AsyncNoop', '{{}}'"
        " FROM generate_series(1, greatest(0, %s - (SELECT count(*) FROM {} WHERE state = 'available')))"
    ).format(JOBS, JOBS)
    stop = threading.Event()

    def feed() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(top_up, (QUEUE, BESIDE))
                time.sleep(0.2)

    def vacuum() -> None:
        # What autovacuum would do with a 10 s naptime (the benchmark server may run with it off).
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.wait(VACUUM_EVERY):
                conn.execute(sql.SQL("VACUUM {}").format(JOBS))

    samples: list[dict[str, Any]] = []
    phases = (("before", 30.0), ("held", hold), ("after", max(90.0, hold / 2)))
    feeder = threading.Thread(target=feed, daemon=True)
    vacuumer = threading.Thread(target=vacuum, daemon=True)
    feeder.start()
    vacuumer.start()

    async def run() -> None:
        runtime = Runtime(dsn, schema=SCHEMA, queues={QUEUE: 100}, workers=[WORKERS], plugins=[])
        async with runtime, await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            pin = await psycopg.AsyncConnection.connect(dsn)
            started = time.perf_counter()
            count = sql.SQL(
                "SELECT count(*) FROM {} WHERE state = 'completed' AND completed_at >= %s"
            ).format(JOBS)
            for phase, seconds in phases:
                if phase == "held":
                    await pin.execute("SELECT txid_current()")  # an xid: vacuum can't remove newer dead rows
                if phase == "after":
                    await pin.rollback()
                phase_end = time.perf_counter() + seconds
                while time.perf_counter() < phase_end:
                    since = (await (await conn.execute("SELECT now()")).fetchone() or [None])[0]
                    await anyio.sleep(window)
                    done = await (await conn.execute(count, (since,))).fetchone()
                    dead = await (
                        await conn.execute(
                            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass",
                            [f"{SCHEMA}.jobs"],
                        )
                    ).fetchone()
                    samples.append(
                        {
                            "t_s": round(time.perf_counter() - started, 1),
                            "phase": phase,
                            "jobs_s": (done or [0])[0] / window,
                            "dead_tuples": (dead or [0])[0],
                        }
                    )
                    print(f"  {samples[-1]}")
            await pin.close()

    anyio.run(run)
    stop.set()
    feeder.join()
    vacuumer.join()
    base = statistics.mean(s["jobs_s"] for s in samples if s["phase"] == "before")
    held = [s["jobs_s"] for s in samples if s["phase"] == "held"]
    after = [s for s in samples if s["phase"] == "after"]
    release_t = after[0]["t_s"] - window if after else 0.0
    recovered = next((s["t_s"] - release_t for s in after if s["jobs_s"] >= 0.9 * base), None)
    return {
        "hold_s": hold,
        "baseline_jobs_s": base,
        "held_first_jobs_s": held[0] if held else None,
        "held_last_jobs_s": held[-1] if held else None,
        "recovered_after_s": recovered,
        "peak_dead_tuples": max(s["dead_tuples"] for s in samples),
        "samples": samples,
    }


def upkeep_markdown(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if result.get("prune"):
        pr = result["prune"]

        def size(key: str) -> str:
            mb = 1024 * 1024
            return f"{pr[key]['table_bytes'] / mb:,.0f} + {pr[key]['index_bytes'] / mb:,.0f} MB"

        lines += [
            "",
            f"Pruning {pr['deleted']:,} completed jobs in batches of 10,000: {pr['rows_s']:,.0f} rows/s, "
            f"longest batch {pr['longest_batch_ms']:.0f} ms; table + indexes {size('before')} before, "
            f"{size('after_prune')} after, {size('after_vacuum')} after VACUUM. A fetch loop beside it: "
            f"longest fetch {pr['fetch_during_max_ms']:.1f} ms (p99 {pr['fetch_during_p99_ms']:.1f} ms) vs "
            f"{pr['fetch_baseline_max_ms']:.1f} ms before.",
        ]
        waits = pr.get("fetch_waits", {})
        lock = waits.get("Lock")
        lines += [
            "",
            f"Waits of the fetch loop's backend while pruning ({pr.get('wait_samples', 0):,} samples "
            "of pg_stat_activity, every 2 ms): longest wait on a lock "
            + (
                f"{lock['ms']:.0f} ms ({lock['event']}, "
                + ("blocked by the pruner" if lock["by_pruner"] else "not by the pruner")
                + ")"
                if lock
                else "none seen"
            )
            + "; longest other waits: "
            + (
                ", ".join(
                    f"{kind} {w['ms']:.0f} ms ({w['event']})"
                    for kind, w in sorted(waits.items())
                    if kind != "Lock"
                )
                or "none"
            )
            + ".",
        ]
    if result.get("pinned"):
        pin = result["pinned"]
        lines += [
            "",
            f"Idle in transaction for {pin['hold_s']:.0f} s under steady load: "
            f"{pin['baseline_jobs_s']:,.0f} jobs/s before, "
            f"{pin['held_first_jobs_s']:,.0f} → {pin['held_last_jobs_s']:,.0f} jobs/s while held, peak "
            f"{pin['peak_dead_tuples']:,} dead tuples; back to 90 % of the baseline "
            + (
                f"{pin['recovered_after_s']:.0f} s after release."
                if pin["recovered_after_s"] is not None
                else "not within the run."
            ),
            "",
            "| t (s) | Phase | Jobs/s | Dead tuples |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {s['t_s']} | {s['phase']} | {s['jobs_s']:,.0f} | {s['dead_tuples']:,} |"
            for s in pin["samples"]
        ]
    return lines
