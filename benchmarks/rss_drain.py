"""Worker memory across a long drain: is the RSS of ``python -m pgqueue start`` flat?

100,000 no-op jobs (``--full``: 300,000) are inserted server-side, then the real worker process
drains them at concurrency 100 while its RSS is sampled every 50 ms. Reported: the RSS once the
first 10 % are done (everything warmed up: pool, prepared statements, caches), at 50 %, and at
the end, and the growth from 10 % to the end. A leak of even 100 bytes per job would show as
about 10 MB here.

    python -m benchmarks.rss_drain [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from pgqueue.localdb import find_database
from pgqueue.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_rss"
CONCURRENCY = 100


def _prepare(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA)
        # Inserted by the server, so nothing of the preload lives in any Python process.
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker, queue, args) "
                "SELECT 'bench.RssNoop', 'bench', jsonb_build_object('seq', g) "
                "FROM generate_series(1, %s) AS g"
            ).format(sql.Identifier(SCHEMA, "jobs")),
            (count,),
        )


def measure(dsn: str, count: int) -> dict[str, Any]:
    _prepare(dsn, count)
    command = [
        sys.executable, "-m", "pgqueue", "start", "--dsn", dsn, "--schema", SCHEMA,
        "--queues", f"bench:{CONCURRENCY}", "--workers", "benchmarks.rss_worker", "--log-level", "warning",
    ]  # fmt: skip
    samples: list[tuple[int, int]] = []  # (jobs done, rss bytes)
    done = [0]
    worker = subprocess.Popen(
        command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    stop = threading.Event()

    def sample() -> None:
        process = psutil.Process(worker.pid)
        while not stop.is_set():
            try:
                samples.append((done[0], process.memory_info().rss))
            except psutil.Error:
                return
            stop.wait(0.05)

    threading.Thread(target=sample, daemon=True).start()
    started = time.monotonic()
    query = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(
        sql.Identifier(SCHEMA, "jobs")
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while done[0] < count:
                if time.monotonic() - started > 900:
                    raise RuntimeError(f"the drain did not finish in 900 s ({done[0]:,} of {count:,})")
                if worker.poll() is not None:
                    error = worker.stderr.read().decode()[-500:] if worker.stderr else ""
                    raise RuntimeError(f"the worker exited: {error}")
                row = conn.execute(query).fetchone()
                done[0] = int(row[0]) if row else 0
                time.sleep(0.05)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        worker.terminate()
        worker.wait(60)

    def rss_at(fraction: float) -> float:
        reached = [rss for jobs, rss in samples if jobs >= fraction * count]
        return (reached[0] if reached else samples[-1][1]) / 2**20

    warm, middle, end = rss_at(0.1), rss_at(0.5), rss_at(1.0)
    return {
        "jobs": count,
        "seconds": seconds,
        "rss_mb_at_10pct": warm,
        "rss_mb_at_50pct": middle,
        "rss_mb_at_end": end,
        "peak_rss_mb": max(rss for _, rss in samples) / 2**20,
        "growth_mb": end - warm,
        "growth_bytes_per_job": (end - warm) * 2**20 / (0.9 * count),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss_drain")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args(argv)
    count = 300_000 if args.full else 100_000
    dsn = find_database().dsn
    result = measure(dsn, count)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    mode = "full" if args.full else "quick"
    lines = [
        f"# Worker memory across a {count:,}-job drain ({mode} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}: `python -m pgqueue start --queues "
        f"bench:{CONCURRENCY}`, no-op async jobs, RSS sampled every 50 ms "
        f"({count / result['seconds']:,.0f} jobs/s including start-up).",
        "",
        "| Jobs | RSS at 10 % MB | at 50 % MB | at end MB | Peak MB | Growth 10 %→end | Bytes/job |",
        "|---|---|---|---|---|---|---|",
        f"| {count:,} | {result['rss_mb_at_10pct']:.1f} | {result['rss_mb_at_50pct']:.1f} | "
        f"{result['rss_mb_at_end']:.1f} | {result['peak_rss_mb']:.1f} | {result['growth_mb']:+.1f} MB | "
        f"{result['growth_bytes_per_job']:.1f} |",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"rss-{stamp}-{mode}", f"rss-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps({"mode": mode, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
