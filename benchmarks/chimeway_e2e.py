"""W4: Chimeway end to end — deliveries per second through ``python -m chimeway.worker``.

In one run, on one database (``chimeway_bench``, so its transaction counters are W4's alone), per
repeat:

* **W4a** logger adapter and **W4b** webhook adapter (to a keep-alive receiver in a process of its
  own, answering 200): N pending deliveries with their dispatch jobs are prepared set-wise in a fresh
  schema, then one ``python -m chimeway.worker`` process with no tuning at all (only the schema and,
  for W4b, the channel are configured) delivers them. Deliveries/s run from the first recorded
  attempt to the last; every delivery must end ``succeeded`` with one attempt. Statements are
  counted in the worker process (every execute of every connection, startup included),
  transactions by the server (``pg_stat_database``, less the poller's own); peak RSS is sampled.
* **W2** pgqueue's no-op drain of N jobs at concurrency 100, on the same event loop implementation
  as the worker (plain asyncio): the queue Chimeway runs on.
* **Raw floor**: the same delivery work in raw psycopg, batches of 100, two transactions per batch
  over two connections (claim the jobs and mark the deliveries dispatched; then insert the attempts,
  mark them succeeded and complete the jobs), as :func:`benchmarks.chimeway_parts.raw_floor`.

``--full`` also runs W4a on 100,000 deliveries and samples the worker's RSS at every tenth of them.

    python -m benchmarks.chimeway_e2e [--full] [--repeats N] [--count N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

import pgqueue
from benchmarks.chimeway_parts import prepare_drain, raw_floor
from chimeway.dispatch import dispatch_job
from chimeway.migrations import migrate_all
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "chimeway_bench"
SCHEMA = "bench_chimeway"
DRAIN_SCHEMA = "bench_noop"
FLOOR_SCHEMA = "bench_floor"
DEADLINE = 900.0


def bench_dsn() -> str:
    """The benchmark's own database on the server the suite uses (created when missing)."""
    base = find_database().dsn
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = DATABASE
    return psycopg.conninfo.make_conninfo(**info)


def prepare(dsn: str, schema: str, count: int, channel: str) -> None:
    """A fresh ``schema`` with ``count`` pending deliveries on ``channel`` and their dispatch jobs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, schema)
        names = {
            "events": sql.Identifier(schema, "chimeway_events"),
            "notifications": sql.Identifier(schema, "chimeway_notifications"),
            "deliveries": sql.Identifier(schema, "chimeway_deliveries"),
        }
        rows = conn.execute(
            sql.SQL(
                "WITH event AS ("
                " INSERT INTO {events} (notification_key, notification_version, idempotency_key)"
                " VALUES ('bench', 1, 'bench-' || gen_random_uuid()) RETURNING id),"
                " notes AS ("
                " INSERT INTO {notifications} (event_id, recipient_identity, recipient_type, metadata)"
                " SELECT event.id, 'user:' || g, 'user', '{{\"text\": \"hello\"}}'"
                " FROM event, generate_series(1, %(count)s) AS g RETURNING id)"
                " INSERT INTO {deliveries} (notification_id, channel, metadata)"
                ' SELECT id, %(channel)s, \'{{"notification_key": "bench"}}\' FROM notes RETURNING id'
            ).format(**names),
            {"count": count, "channel": channel},
        ).fetchall()
        for start in range(0, len(rows), 5_000):
            jobs = [dispatch_job(row[0]) for row in rows[start : start + 5_000]]
            pgqueue.insert_all(conn, jobs, schema=schema, notify=False)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("jobs", "chimeway_deliveries", "chimeway_notifications", "chimeway_events"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, table)))


class Poller:
    """The orchestrator's own connection, counting the transactions it runs (to subtract them)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.transactions = 0

    def value(self, query: sql.Composable | str, params: Any = None) -> Any:
        self.transactions += 1
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def row(self, query: sql.Composable | str) -> tuple[Any, ...]:
        self.transactions += 1
        row = self.conn.execute(query).fetchone()
        assert row is not None
        return tuple(row)

    def close(self) -> None:
        self.conn.close()  # its backend flushes its statistics as it exits


def server_transactions(dsn: str) -> int:
    """Committed and rolled-back transactions of this database so far, as the server counts them."""
    time.sleep(1.2)  # backends report at most once a second; exited ones have reported
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    # This connection's own two statements were still running when the counter was read.
    return int(row[0]) if row else 0


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    """A keep-alive webhook receiver in a process of its own; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.chimeway_parts", "receiver", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the webhook receiver did not start")
        yield f"http://127.0.0.1:{port}/hooks"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], process.memory_info().rss)
        except psutil.Error:
            return
        stop.wait(0.05)


def measure_worker(
    dsn: str, count: int, adapter: str, url: str | None, marks: int = 0, settings: str = ""
) -> dict[str, Any]:
    """One worker process at its defaults (unless ``settings`` adds TOML lines) delivering ``count``
    prepared deliveries."""
    channel = "in_app" if adapter == "logger" else "webhook"
    prepare(dsn, SCHEMA, count, channel)
    scratch = Path(tempfile.mkdtemp())
    config = scratch / "chimeway.toml"
    text = f'schema = "{SCHEMA}"\n{settings}'
    if adapter == "webhook":
        text += f'[channels.webhook]\nadapter = "webhook"\nconfig = {{ url = "{url}" }}\n'
    config.write_text(text)
    counts_file = scratch / "counts.json"
    deliveries = sql.Identifier(SCHEMA, "chimeway_deliveries")
    attempts = sql.Identifier(SCHEMA, "chimeway_delivery_attempts")
    open_query = sql.SQL(
        "SELECT count(*) FROM {} WHERE status IN ('pending', 'dispatched', 'failed')"
    ).format(deliveries)
    before = server_transactions(dsn)
    load = os.getloadavg()[0]
    poller = Poller(dsn)
    env = {**os.environ, "DATABASE_URL": dsn, "CHIMEWAY_BENCH_COUNTS": str(counts_file)}
    command = [sys.executable, "-m", "benchmarks.chimeway_parts", "worker", "--"]
    worker = subprocess.Popen(
        [*command, "--config", str(config), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak, stop = [0], threading.Event()
    threading.Thread(target=_sample_rss, args=(worker.pid, peak, stop), daemon=True).start()
    rss_marks: list[tuple[int, float]] = []
    next_mark = count // marks if marks else None
    # The worker's CPU time from the first poll that sees deliveries done to the last: its cost
    # per delivery, startup (imports, connections) left out.
    cpu_from: tuple[int, float] | None = None
    cpu_to = 0.0
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            left = int(poller.value(open_query))
            done = count - left
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(worker.pid).cpu_times()
                cpu_to = times.user + times.system
                if cpu_from is None and done > 0:
                    cpu_from = (done, cpu_to)
            while next_mark is not None and done >= next_mark and next_mark <= count:
                with contextlib.suppress(psutil.Error):
                    rss_marks.append((next_mark, psutil.Process(worker.pid).memory_info().rss / 2**20))
                next_mark += count // marks
            if left == 0:
                break
            if worker.poll() is not None:
                tail = worker.stderr.read().decode()[-800:] if worker.stderr else ""
                raise RuntimeError(f"the worker exited: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} deliveries still open after {DEADLINE:.0f}s")
            time.sleep(0.05)
        first, last, attempt_rows = poller.row(
            sql.SQL("SELECT min(inserted_at), max(inserted_at), count(*) FROM {}").format(attempts)
        )
        succeeded = poller.value(
            sql.SQL("SELECT count(*) FROM {} WHERE status = 'succeeded'").format(deliveries)
        )
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        poller.close()
    after = server_transactions(dsn)
    statements = json.loads(counts_file.read_text())["statements"] if counts_file.exists() else None
    seconds = (last - first).total_seconds()
    return {
        "adapter": adapter,
        "deliveries": count,
        "succeeded": int(succeeded),
        "attempts": int(attempt_rows),
        "seconds": seconds,
        "per_second": count / seconds if seconds > 0 else None,
        "peak_rss_mb": peak[0] / 2**20,
        "statements_per_delivery": statements / count if statements is not None else None,
        "xacts_per_delivery": (after - before - poller.transactions) / count,
        "rss_marks_mb": rss_marks,
        "load1_before": load,
        "cpu_us_per_delivery": (
            1e6 * (cpu_to - cpu_from[1]) / (count - cpu_from[0]) if cpu_from and count > cpu_from[0] else None
        ),
    }


def measure_drain(dsn: str, count: int, concurrency: int = 100) -> dict[str, Any]:
    """W2: pgqueue's no-op drain of ``count`` jobs at ``concurrency``, in a process of its own."""
    prepare_drain(dsn, DRAIN_SCHEMA, count)
    jobs = sql.Identifier(DRAIN_SCHEMA, "jobs")
    poller = Poller(dsn)
    command = [sys.executable, "-m", "benchmarks.chimeway_parts", "drain", "--dsn", dsn]
    command += ["--schema", DRAIN_SCHEMA, "--concurrency", str(concurrency)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + DEADLINE
    cpu_from: tuple[int, float] | None = None
    cpu_to = 0.0
    try:
        query = sql.SQL("SELECT count(*) FROM {} WHERE state <> 'completed'").format(jobs)
        while (left := int(poller.value(query))) > 0:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(process.pid).cpu_times()
                cpu_to = times.user + times.system
                if cpu_from is None and left < count:
                    cpu_from = (count - left, cpu_to)
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the drain did not finish")
            time.sleep(0.05)
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(process.pid).cpu_times()
            cpu_to = times.user + times.system
        first, last = poller.row(sql.SQL("SELECT min(attempted_at), max(completed_at) FROM {}").format(jobs))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        poller.close()
    seconds = (last - first).total_seconds()
    cpu = 1e6 * (cpu_to - cpu_from[1]) / (count - cpu_from[0]) if cpu_from and count > cpu_from[0] else None
    return {
        "jobs": count,
        "seconds": seconds,
        "per_second": count / seconds,
        "concurrency": concurrency,
        "cpu_us_per_job": cpu,
    }


def measure_floor(dsn: str, count: int) -> dict[str, Any]:
    prepare(dsn, FLOOR_SCHEMA, count, "in_app")
    result = raw_floor(dsn, FLOOR_SCHEMA, count)
    if result["deliveries"] != count:
        raise RuntimeError(f"the raw floor delivered {result['deliveries']} of {count}")
    return result


def _stats(values: Sequence[float | None], digits: int = 0) -> str:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return "n/a"
    fmt = f"{{:,.{digits}f}}"
    median = fmt.format(statistics.median(numbers))
    return f"{median} ({fmt.format(min(numbers))}-{fmt.format(max(numbers))})"


def report(mode: str, count: int, repeats: int, rows: dict[str, list[dict[str, Any]]], rss: Any) -> str:
    w4a = [r["per_second"] for r in rows["logger"]]
    ratios_floor = [a / f["per_second"] for a, f in zip(w4a, rows["floor"], strict=True)]
    ratios_drain = [a / d["per_second"] for a, d in zip(w4a, rows["drain"], strict=True)]
    webhook_floor = [
        w["per_second"] / f["per_second"] for w, f in zip(rows["webhook"], rows["floor"], strict=True)
    ]
    lines = [
        f"# W4: Chimeway end to end ({mode} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}; {count:,} deliveries (or jobs) per "
        f"measurement, {repeats} repeats, all four measured in each repeat; median (min-max). "
        "W4a/W4b: one `python -m chimeway.worker` at its defaults, every delivery succeeding on its "
        "first attempt. Statements counted in the worker process, transactions by the server.",
        "",
        "| Workload | deliveries/s | Statements/delivery | Xacts/delivery | Worker CPU µs/delivery "
        "| Peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("logger", "W4a logger"), ("webhook", "W4b webhook (keep-alive receiver)")):
        results = rows[key]
        lines.append(
            f"| {label} | {_stats([r['per_second'] for r in results])} "
            f"| {_stats([r['statements_per_delivery'] for r in results], 3)} "
            f"| {_stats([r['xacts_per_delivery'] for r in results], 3)} "
            f"| {_stats([r['cpu_us_per_delivery'] for r in results])} "
            f"| {_stats([r['peak_rss_mb'] for r in results])} |"
        )
    drain = _stats([r["per_second"] for r in rows["drain"]])
    drain_cpu = _stats([r.get("cpu_us_per_job") for r in rows["drain"]])
    lines.append(f"| W2 pgqueue no-op drain, c=100 (jobs/s) | {drain} | | | {drain_cpu} | |")
    lines.append(
        f"| Raw psycopg delivery floor, batches of 100 | {_stats([r['per_second'] for r in rows['floor']])} "
        "| 0.020 | 0.020 | | |"
    )
    lines += [
        "",
        f"W4a is **{_stats([100 * r for r in ratios_floor])} %** of the raw floor and "
        f"{_stats([100 * r for r in ratios_drain])} % of pgqueue's no-op drain (per repeat, same run); "
        f"W4b is {_stats([100 * r for r in webhook_floor])} % of the floor. Load average (1 min) before "
        f"each worker run: {_stats([r['load1_before'] for r in rows['logger'] + rows['webhook']], 1)} "
        "on 2 cores shared with other work; the worker's CPU per delivery depends far less on it.",
    ]
    if rss:
        marks = ", ".join(f"{n:,}: {mb:.0f}" for n, mb in rss["rss_marks_mb"])
        lines += [
            "",
            f"RSS across {rss['deliveries']:,} deliveries (W4a, {rss['per_second']:,.0f}/s): "
            f"worker RSS in MB after each tenth — {marks}; peak {rss['peak_rss_mb']:.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chimeway_e2e")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    count = args.count or (20_000 if args.full else 10_000)
    repeats = args.repeats or (3 if args.full else 1)
    dsn = bench_dsn()
    rows: dict[str, list[dict[str, Any]]] = {"logger": [], "webhook": [], "drain": [], "floor": []}
    with receiver() as url:
        for repeat in range(repeats):
            rows["logger"].append(measure_worker(dsn, count, "logger", None))
            rows["webhook"].append(measure_worker(dsn, count, "webhook", url))
            rows["drain"].append(measure_drain(dsn, count))
            rows["floor"].append(measure_floor(dsn, count))
            print(
                f"[W4] repeat {repeat + 1}: logger {rows['logger'][-1]['per_second']:,.0f}/s, "
                f"webhook {rows['webhook'][-1]['per_second']:,.0f}/s, "
                f"drain {rows['drain'][-1]['per_second']:,.0f} jobs/s, "
                f"floor {rows['floor'][-1]['per_second']:,.0f}/s",
                flush=True,
            )
    rss = measure_worker(dsn, 100_000, "logger", None, marks=10) if args.full else None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in (SCHEMA, DRAIN_SCHEMA, FLOOR_SCHEMA):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    for results in (rows["logger"], rows["webhook"]):
        for result in results:
            if result["succeeded"] != result["deliveries"] or result["attempts"] != result["deliveries"]:
                raise RuntimeError(f"not every delivery succeeded exactly once: {result}")
    markdown = report(mode, count, repeats, rows, rss)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {"mode": mode, "count": count, "repeats": repeats, "rows": rows, "rss": rss}
    for name in (f"chimeway-{stamp}-{mode}", f"chimeway-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
