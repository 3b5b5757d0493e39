"""Chimeway digests — a digest window closing over 100,000 held deliveries for 10,000 recipients.

In a fresh schema with one digest rule (email, a 60-minute window, one bucket per recipient):

* **hold**: ``trigger()`` of ``--events`` events (default 10) to ``--recipients`` recipients
  (default 10,000), one email each, every delivery held; each event's trigger is timed with its
  commit. The same trigger without a rule (a second key no rule matches) runs in the same repeat,
  so the cost of holding is a ratio measured side by side.
* **flush**: the window is closed (``close_windows``) and the flush of the whole window is run in
  this process on one connection (``flush_window``, the code the flush job runs), timed from the
  call to its last commit: buckets/s, held deliveries/s, and rows written/s (per member: its
  delivery updated; per bucket: an event, a notification, a digest delivery and its dispatch job
  inserted, the bucket updated).
* **worker flush** (``--worker``): the same window flushed by ``python -m chimeway.worker`` (its
  flush jobs made due by ``close_windows``), timed on the database clock from the close to the
  last bucket's ``emitted_at``: the scheduled-job path end to end, the stager's interval included.

Every run checks that each bucket was emitted once and every held delivery digested once.

    python -m benchmarks.chimeway_digest [--recipients 10000] [--events 10] [--repeats 1] [--worker]
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
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from chimeway.config import Settings
from chimeway.digests import DIGEST_KEY, DigestRule, close_windows, define_rule, flush_window
from chimeway.migrations import migrate_all
from chimeway.notifier import Notifier, Recipient
from chimeway.trigger import trigger
from chimeway.worker import engine_for, session_factory
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_chimeway_digest"
KEY = "comment_posted"
UNHELD_KEY = "comment_posted_unheld"
RULE = DigestRule("comments-hourly", "email", match_notification_key=KEY, window_minutes=60)


class Comment(Notifier):
    notification_key = KEY

    def __init__(self, key: str = KEY) -> None:
        self.notification_key = key

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(f"user:{u}") for u in range(1, params["count"] + 1)]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["email"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"title": f"Comment {params['n']} on the spring release", "to": recipient.identity}


def _fresh_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, SCHEMA)


def _trigger(sessions: Any, key: str, count: int, n: int) -> float:
    with sessions() as session:
        session.connection()
        started = time.perf_counter()
        trigger(
            session, Comment(key), {"count": count, "n": n}, idempotency_key=f"{key}-{n}", queue_schema=SCHEMA
        )
        session.commit()
        return time.perf_counter() - started


def _check(conn: psycopg.Connection[Any], recipients: int, events: int) -> None:
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {b} WHERE flush_state = 'emitted'),"
            " (SELECT count(*) FROM {d} WHERE metadata ->> 'notification_key' = %s),"
            " (SELECT count(*) FROM {d} WHERE status = 'digested')"
        ).format(
            b=sql.Identifier(SCHEMA, "chimeway_digest_buckets"),
            d=sql.Identifier(SCHEMA, "chimeway_deliveries"),
        ),
        (DIGEST_KEY,),
    ).fetchone()
    if row != (recipients, recipients, recipients * events):
        raise RuntimeError(
            f"expected {recipients} buckets/digests and {recipients * events} digested, got {row}"
        )


def _hold(dsn: str, recipients: int, events: int) -> tuple[list[float], list[float]]:
    """Trigger the held events (and as many unheld ones, interleaved); their times."""
    _fresh_schema(dsn)
    engine = engine_for(Settings(database_url=dsn, schema=SCHEMA), pool_size=1)
    held, unheld = [], []
    try:
        sessions = session_factory(engine, SCHEMA)
        with sessions() as session:
            define_rule(session, RULE)
            session.commit()
        for n in range(events):
            held.append(_trigger(sessions, KEY, recipients, n))
            unheld.append(_trigger(sessions, UNHELD_KEY, recipients, n))
    finally:
        engine.dispose()
    return held, unheld


def _first_bucket(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute(
        sql.SQL("SELECT id FROM {} LIMIT 1").format(sql.Identifier(SCHEMA, "chimeway_digest_buckets"))
    ).fetchone()
    assert row is not None
    return row[0]


def measure_flush(dsn: str, recipients: int, events: int) -> dict[str, Any]:
    held, unheld = _hold(dsn, recipients, events)
    with psycopg.connect(dsn, autocommit=True) as conn:
        closed = close_windows(conn, RULE.rule_key, schema=SCHEMA)
        started = time.perf_counter()
        result = flush_window(conn, _first_bucket(conn), schema=SCHEMA)
        seconds = time.perf_counter() - started
        _check(conn, recipients, events)
    rows = result.members + result.buckets * 5
    return {
        "recipients": recipients,
        "held": recipients * events,
        "buckets_closed": closed,
        "hold_seconds_per_event": statistics.median(held),
        "unheld_seconds_per_event": statistics.median(unheld),
        "hold_ratio": statistics.median(h / u for h, u in zip(held, unheld, strict=True)),
        "flush_seconds": seconds,
        "buckets_per_second": result.buckets / seconds,
        "members_per_second": result.members / seconds,
        "rows_written": rows,
        "rows_per_second": rows / seconds,
    }


def measure_worker_flush(dsn: str, recipients: int, events: int, timeout: float = 600) -> dict[str, Any]:
    _hold(dsn, recipients, events)
    folder = Path(tempfile.mkdtemp())
    config, log = folder / "chimeway.toml", folder / "worker.log"
    config.write_text(f'schema = "{SCHEMA}"\n')
    buckets = sql.Identifier(SCHEMA, "chimeway_digest_buckets")
    pending = sql.SQL(
        "SELECT count(*) FILTER (WHERE flush_state = 'pending'), max(emitted_at) FROM {}"
    ).format(buckets)
    with log.open("wb") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
            env={**os.environ, "DATABASE_URL": dsn},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            started_at = row[0]
            close_windows(conn, RULE.rule_key, schema=SCHEMA)
            deadline = time.monotonic() + timeout
            while True:
                left, last = conn.execute(pending).fetchone() or (None, None)
                if left == 0:
                    break
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the flush did not finish: {log.read_text()[-500:]}")
                time.sleep(0.25)
            _check(conn, recipients, events)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
    seconds = (last - started_at).total_seconds()
    return {"worker_flush_seconds": seconds, "worker_members_per_second": recipients * events / seconds}


def _stats(values: Sequence[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(runs: list[dict[str, Any]], command: str) -> str:
    def col(key: str, digits: int = 0) -> str:
        return (
            _stats([r[key] for r in runs if key in r], digits) if any(key in r for r in runs) else "not run"
        )

    lines = [
        f"# Chimeway digests: a window closing over {runs[0]['held']:,} held deliveries "
        f"for {runs[0]['recipients']:,} recipients",
        "",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(runs)} repeat(s); median (min-max).",
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| Flush of the window, s | {col('flush_seconds', 2)} |",
        f"| Buckets (digests) emitted/s | {col('buckets_per_second')} |",
        f"| Held deliveries digested/s | {col('members_per_second')} |",
        f"| Rows written/s ({runs[0]['rows_written']:,} rows) | {col('rows_per_second')} |",
        f"| Worker flush, close to last emit, s | {col('worker_flush_seconds', 2)} |",
        f"| Trigger of 1 event, held, s | {col('hold_seconds_per_event', 3)} |",
        f"| Trigger of 1 event, no rule, s | {col('unheld_seconds_per_event', 3)} |",
        f"| Held ÷ no rule (same run) | {col('hold_ratio', 2)} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help="also flush through the worker process")
    parser.add_argument("--no-save", action="store_true", help="print, don't write results/")
    args = parser.parse_args(argv)
    dsn = find_database().dsn
    runs = []
    for _ in range(args.repeats):
        run = measure_flush(dsn, args.recipients, args.events)
        if args.worker:
            run |= measure_worker_flush(dsn, args.recipients, args.events)
        runs.append(run)
        print(json.dumps(run, default=str), file=sys.stderr)
    command = "python -m benchmarks.chimeway_digest " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(runs, command.strip())
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "chimeway-digest-latest.md").write_text(text)
        (RESULTS / "chimeway-digest-latest.json").write_text(json.dumps(runs, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
