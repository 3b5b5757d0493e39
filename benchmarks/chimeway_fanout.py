"""W4c: Chimeway fan-out — one event to many recipients: planned, committed, then delivered.

For each size N (quick: 2,000 and 10,000 recipients; full: 10,000 and 100,000), in a fresh schema
where 1 % of the recipients opted out of the channel and another 1 % of the category:

* **trigger**: ``trigger()`` of one event to N recipients, one channel each, in a SQLAlchemy
  session, timed from the call to the end of the commit: deliveries/s and rows/s (the event,
  N notifications, N deliveries, one job per pending delivery).
* **raw floor**: the same rows planned without chimeway, in plain psycopg, two ways
  (:mod:`benchmarks.chimeway_floor`): one ``INSERT … SELECT`` statement generating them
  server-side, and ``COPY`` of rows formatted client-side. No notifier, no validation, no
  redaction: what the database needs for these rows. The trigger is compared with the faster of
  the two in the same repeat.
* **end to end**: one ``python -m chimeway.worker`` (default settings; the channel goes to the
  logger adapter) is started and idle; the trigger commits; timed from the call until every
  pending delivery has succeeded (the last delivery's ``updated_at``, on the database clock).

Trigger and floors take turns going first within each repeat, so load from other work falls on
all of them; ratios are taken per repeat and reported as median (min-max), like every number here.

    python -m benchmarks.chimeway_fanout [--full] [--repeats 3] [--e2e-repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from benchmarks.chimeway_floor import (
    CATEGORY,
    CHANNEL,
    KEY,
    SCHEMA,
    expected_jobs,
    fresh_schema,
    measure_copy_floor,
    measure_statement_floor,
    rates,
    table,
)
from chimeway.config import Settings
from chimeway.dispatch import QUEUE
from chimeway.notifier import Notifier, Recipient
from chimeway.store import queries_for
from chimeway.trigger import trigger
from chimeway.worker import engine_for, session_factory
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"


class Announcement(Notifier):
    notification_key = KEY
    category = CATEGORY

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(f"user:{u}") for u in range(1, params["count"] + 1)]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return [CHANNEL]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": params["subject"], "body": "Our spring release is out.", "to": recipient.identity}


def _run_trigger(dsn: str, count: int, key: str) -> tuple[float, int]:
    engine = engine_for(Settings(database_url=dsn, schema=SCHEMA), pool_size=1)
    try:
        with session_factory(engine, SCHEMA)() as session:
            session.connection()  # connect before the clock starts
            started = time.perf_counter()
            result = trigger(
                session,
                Announcement(),
                {"count": count, "subject": "Spring release"},
                idempotency_key=key,
                queue_schema=SCHEMA,
            )
            session.commit()
            seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return seconds, len(result.job_ids)


def measure_trigger(dsn: str, count: int) -> dict[str, Any]:
    fresh_schema(dsn, count)
    seconds, jobs = _run_trigger(dsn, count, f"fanout-{count}")
    if jobs != expected_jobs(count):
        raise RuntimeError(f"trigger enqueued {jobs} jobs, expected {expected_jobs(count)}")
    return rates(count, jobs, seconds)


def _open_deliveries(conn: psycopg.Connection[Any]) -> int:
    return sum(int(n) for _, n in conn.execute(queries_for(SCHEMA).count_open_deliveries).fetchall())


def _wait(
    condition: Any, what: str, timeout: float, worker: subprocess.Popen[bytes], log: Path, interval: float
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited while waiting for {what}: {log.read_text()[-500:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def measure_end_to_end(dsn: str, count: int, timeout: float) -> dict[str, Any]:
    fresh_schema(dsn, count)
    folder = Path(tempfile.mkdtemp())
    config, log = folder / "chimeway.toml", folder / "worker.log"
    config.write_text(f'schema = "{SCHEMA}"\n')
    # The worker's stderr goes to a file: a pipe nobody reads could fill up and stall it.
    with log.open("wb") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
            env={**os.environ, "DATABASE_URL": dsn},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    producers = sql.SQL("SELECT count(*) FROM {} WHERE queue = %s").format(table("pgqueue_producers"))
    finished = sql.SQL("SELECT max(updated_at), count(*) FILTER (WHERE status = 'succeeded') FROM {}").format(
        table("chimeway_deliveries")
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:

            def ready() -> bool:
                row = conn.execute(producers, (QUEUE,)).fetchone()
                return bool(row and row[0])

            _wait(ready, "the worker to start", 60, worker, log, 0.05)
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            started_at = row[0]
            commit_seconds, jobs = _run_trigger(dsn, count, f"fanout-e2e-{count}")
            # The time comes from the rows (the database's clock), so polling less often costs no
            # precision, only a little of the delay before the run is seen to be over.
            _wait(lambda: _open_deliveries(conn) == 0, "every delivery to end", timeout, worker, log, 0.25)
            row = conn.execute(finished).fetchone()
            assert row is not None
            last, succeeded = row
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
        shutil.rmtree(folder, ignore_errors=True)
    if succeeded != jobs:
        raise RuntimeError(f"{succeeded} deliveries succeeded, expected {jobs}")
    seconds = (last - started_at).total_seconds()
    return {
        "recipients": count,
        "jobs": jobs,
        "commit_seconds": commit_seconds,
        "seconds": seconds,
        "delivered_per_second": jobs / seconds,
    }


def _stats(values: Sequence[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def _table_lines(rows: dict[int, dict[str, list[dict[str, Any]]]]) -> list[str]:
    lines = [
        "| Recipients | Commit s | Deliveries/s | Rows/s | Floor: one statement | Floor: COPY "
        "| Trigger ÷ faster floor | End to end s | Delivered/s end to end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for count, runs in rows.items():
        planned, statement, copy, e2e = runs["trigger"], runs["statement"], runs["copy"], runs["e2e"]
        ratios = [
            p["deliveries_per_second"] / max(s["deliveries_per_second"], c["deliveries_per_second"]) * 100
            for p, s, c in zip(planned, statement, copy, strict=True)
        ]
        e2e_cells = (
            [_stats([r["seconds"] for r in e2e], 1), _stats([r["delivered_per_second"] for r in e2e])]
            if e2e
            else ["not run", "not run"]
        )
        cells = [
            f"{count:,}",
            _stats([r["seconds"] for r in planned], 2),
            _stats([r["deliveries_per_second"] for r in planned]),
            _stats([r["rows_per_second"] for r in planned]),
            _stats([r["deliveries_per_second"] for r in statement]),
            _stats([r["deliveries_per_second"] for r in copy]),
            _stats(ratios) + " %",
            *e2e_cells,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


MEASUREMENTS = {"trigger": measure_trigger, "statement": measure_statement_floor, "copy": measure_copy_floor}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chimeway_fanout")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-repeats", type=int, default=None, help="default: --repeats")
    parser.add_argument("--e2e-timeout", type=float, default=3600.0, help="seconds per end-to-end run")
    args = parser.parse_args(argv)
    sizes = (10_000, 100_000) if args.full else (2_000, 10_000)
    e2e_repeats = args.repeats if args.e2e_repeats is None else args.e2e_repeats
    dsn = find_database().dsn
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows: dict[int, dict[str, list[dict[str, Any]]]] = {
        n: {"trigger": [], "statement": [], "copy": [], "e2e": []} for n in sizes
    }
    kinds = list(MEASUREMENTS)
    for repeat in range(args.repeats):
        for count in sizes:
            # Each repeat starts with the next one, so none always runs first.
            for kind in kinds[repeat % 3 :] + kinds[: repeat % 3]:
                result = MEASUREMENTS[kind](dsn, count)
                rows[count][kind].append(result)
                print(
                    f"[W4c] {kind} {count:,} repeat {repeat + 1}: {result['seconds']:.2f} s, "
                    f"{result['deliveries_per_second']:,.0f} deliveries/s",
                    flush=True,
                )
    for repeat in range(e2e_repeats):
        for count in sizes:
            result = measure_end_to_end(dsn, count, args.e2e_timeout)
            rows[count]["e2e"].append(result)
            print(
                f"[W4c] end to end {count:,} repeat {repeat + 1}: {result['seconds']:.1f} s "
                f"({result['delivered_per_second']:,.0f} delivered/s)",
                flush=True,
            )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    mode = "full" if args.full else "quick"
    now = datetime.now(UTC)
    load_after = [round(v, 2) for v in os.getloadavg()]
    lines = [
        f"# W4c: Chimeway fan-out ({mode} mode)",
        "",
        f"Run on {now.isoformat(timespec='seconds')}; one event to each size of recipients, one "
        "channel each, 1 % opted out of the channel and 1 % of the category; "
        f"{args.repeats} repeats of trigger and the two raw floors (taking turns), {e2e_repeats} end to end "
        "with one `python -m chimeway.worker` at its defaults (logger adapter); median (min-max). "
        f"Load average {load_before[0]} at start, {load_after[0]} at the end, on {os.cpu_count()} cores.",
        "",
        *_table_lines(rows),
        "",
        "Commit s: `trigger()` called until the commit returned. Rows/s counts the event, the "
        "notifications, the deliveries and the jobs. Floors (deliveries/s): the same rows in plain "
        "psycopg, by one statement generating them server-side, or by COPY; the ratio takes the "
        "faster of the two in each repeat. End to end: from the call until the last delivery "
        "succeeded.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    report = {
        "mode": mode,
        "sizes": sizes,
        "repeats": args.repeats,
        "e2e_repeats": e2e_repeats,
        "load_average": {"start": load_before, "end": load_after},
        "cpu_cores": os.cpu_count(),
        "rows": rows,
    }
    for name in (f"chimeway-fanout-{stamp}-{mode}", f"chimeway-fanout-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
