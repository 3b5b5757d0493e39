"""W4: Chimeway end to end — deliveries per second through ``python -m chimeway.worker``.

For each adapter (``logger``; ``webhook`` to a local receiver that accepts everything), N pending
deliveries with their dispatch jobs are prepared in a fresh schema, the real worker process is
started, and the run is timed from the first recorded attempt to the moment every delivery has
succeeded (attempt rows included). Also reported: the worker's peak RSS and database transactions
per delivery (``pg_stat_database``). Peers have no equivalent, so this table is ours alone.

    python -m benchmarks.chimeway_e2e [--full] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from chimeway.config import Settings
from chimeway.migrations import migrate_all
from chimeway.notifier import Notifier, Recipient
from chimeway.testing import ScriptedWebhookServer
from chimeway.trigger import trigger
from chimeway.worker import engine_for, session_factory
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_chimeway"


class Bench(Notifier):
    notification_key = "bench"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(f"user:{u}") for u in params["users"]]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return [params["channel"]]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"text": "hello"}


def _prepare(dsn: str, count: int, channel: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, SCHEMA)
    engine = engine_for(Settings(database_url=dsn, schema=SCHEMA), pool_size=1)
    sessions = session_factory(engine, SCHEMA)
    per_event = 10
    with sessions() as session:
        for event in range(count // per_event):
            users = list(range(event * per_event, (event + 1) * per_event))
            trigger(
                session,
                Bench(),
                {"users": users, "channel": channel},
                idempotency_key=f"e{event}",
                queue_schema=SCHEMA,
            )
        session.commit()
    engine.dispose()


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, Any]:
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), (SELECT min(inserted_at) FROM {}) FROM {}"
        ).format(
            sql.Identifier(SCHEMA, "chimeway_delivery_attempts"),
            sql.Identifier(SCHEMA, "chimeway_deliveries"),
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _xacts(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def measure(dsn: str, count: int, adapter: str, receiver_url: str | None) -> dict[str, Any]:
    channel = "in_app" if adapter == "logger" else "webhook"
    _prepare(dsn, count, channel)
    config = Path(tempfile.mkdtemp()) / "chimeway.toml"
    text = f'schema = "{SCHEMA}"\nqueue_limit = 20\n'
    if adapter == "webhook":
        text += (
            f'[channels.webhook]\nadapter = "webhook"\nconfig = {{ url = "{receiver_url}", timeout = 5 }}\n'
        )
    config.write_text(text)
    with psycopg.connect(dsn, autocommit=True) as conn:
        xacts_before = _xacts(conn)
        env = {**os.environ, "DATABASE_URL": dsn}
        worker = subprocess.Popen(
            [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            process = psutil.Process(worker.pid)
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.Error:
                    return
                stop.wait(0.05)

        threading.Thread(target=sample, daemon=True).start()
        deadline = time.monotonic() + 600
        done, first = 0, None
        try:
            while time.monotonic() < deadline:
                done, first = _counts(conn)
                if done >= count:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(
                        f"the worker exited: {worker.stderr.read().decode()[-500:] if worker.stderr else ''}"
                    )
                time.sleep(0.02)
            finished = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        finally:
            stop.set()
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        xacts = _xacts(conn) - xacts_before
    seconds = (finished - first).total_seconds() if first else float("nan")
    return {
        "deliveries": count,
        "succeeded": done,
        "seconds": seconds,
        "per_second": count / seconds if seconds else None,
        "peak_rss_mb": peak[0] / 2**20,
        "xacts_per_delivery": xacts / count,
    }


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chimeway_e2e")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    count = 10_000 if args.full else 2_000
    dsn = find_database().dsn
    rows: dict[str, list[dict[str, Any]]] = {"logger": [], "webhook": []}
    with ScriptedWebhookServer(lambda recipient: [200]) as receiver:
        for repeat in range(args.repeats):
            for adapter in rows:
                result = measure(dsn, count, adapter, receiver.url)
                rows[adapter].append(result)
                print(
                    f"[W4] {adapter} repeat {repeat + 1}: {result['per_second']:,.0f} deliveries/s",
                    flush=True,
                )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    mode = "full" if args.full else "quick"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        f"# W4: Chimeway end to end ({mode} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}; {count:,} deliveries per repeat, "
        f"{args.repeats} repeats, `python -m chimeway.worker` with queue_limit 20 (sync dispatch worker "
        "in threads), every delivery succeeding on its first attempt; median (min-max).",
        "",
        "| Adapter | Deliveries | deliveries/s | Peak RSS MB | Xacts/delivery |",
        "|---|---|---|---|---|",
    ]
    for adapter, results in rows.items():
        rate = _stats([r["per_second"] for r in results])
        rss = _stats([r["peak_rss_mb"] for r in results])
        xacts = _stats([r["xacts_per_delivery"] for r in results])
        lines.append(f"| {adapter} | {count:,} | {rate} | {rss} | {xacts} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    for name in (f"chimeway-{stamp}-{mode}", f"chimeway-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(
            json.dumps({"mode": mode, "count": count, "rows": rows}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
