"""W4j: a 3-step journey for N notifications, end to end, against three independent deliveries.

In one run, on one database (``chimeway_bench``), per repeat, each in a fresh schema:

* **journey**: one trigger of a notifier whose journey has three steps (``in_app`` → ``email`` →
  ``sms``, no wait, no condition) to N recipients; then one ``python -m chimeway.worker`` process
  (logger adapter, defaults) walks every run to ``completed``: 3N step jobs that plan a delivery
  each, 3N dispatch jobs, 3N wake-ups.
* **independent**: one trigger of a notifier with the same three channels to N recipients (3N
  deliveries planned at once), delivered by the same worker.

Times run from the trigger's start to the last run completed (or the last delivery succeeded);
the trigger's own time is reported apart. The journey sends one step after another, by design:
its end-to-end time is the price of sequencing (three rounds through the queue instead of one).

    python -m benchmarks.chimeway_journeys [--count N] [--repeats N]
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
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import chimeway
from benchmarks.chimeway_e2e import bench_dsn
from chimeway.journeys import Journey, Step
from chimeway.migrations import migrate_all

SCHEMA = "bench_journeys"
DEADLINE = 900.0
JOURNEY = Journey("bench_journey", 1, [Step(1, "in_app"), Step(2, "email"), Step(3, "sms")])


class _Bench(chimeway.Notifier):
    notification_key = "bench"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[str]:
        return [f"user:{i}" for i in range(int(params["count"]))]

    def channels(self, params: Mapping[str, Any], recipient: chimeway.Recipient) -> Sequence[str]:
        return ["in_app", "email", "sms"]

    def build(self, params: Mapping[str, Any], recipient: chimeway.Recipient) -> Mapping[str, Any]:
        return {"text": "hello"}


class _Journeyed(_Bench):
    notification_key = "bench_journey"
    journey = JOURNEY


def _fresh(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, SCHEMA)
        conn.commit()


def _sqlalchemy_url(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user, host, port = (
        info.get("user") or "postgres",
        info.get("host") or "127.0.0.1",
        info.get("port") or 5432,
    )
    password = f":{info['password']}" if info.get("password") else ""
    return f"postgresql+psycopg://{user}{password}@{host}:{port}/{info.get('dbname')}"


def _left(conn: psycopg.Connection[Any], journey: bool) -> int:
    if journey:
        query = "SELECT count(*) FROM {} WHERE state <> 'completed'"
        table = sql.Identifier(SCHEMA, "chimeway_journey_runs")
    else:
        query = "SELECT count(*) FROM {} WHERE status <> 'succeeded'"
        table = sql.Identifier(SCHEMA, "chimeway_deliveries")
    row = conn.execute(sql.SQL(query).format(table)).fetchone()
    return int(row[0]) if row else 0


def measure(dsn: str, count: int, journey: bool) -> dict[str, float]:
    """One scenario in a fresh schema: trigger, then one worker process until all is done."""
    _fresh(dsn)
    engine = create_engine(_sqlalchemy_url(dsn)).execution_options(schema_translate_map={None: SCHEMA})
    config = Path(tempfile.mkdtemp()) / "chimeway.toml"
    config.write_text(f'schema = "{SCHEMA}"\n')
    notifier = _Journeyed() if journey else _Bench()
    started = time.perf_counter()
    with Session(engine) as session:
        chimeway.trigger(
            session, notifier, {"count": count}, idempotency_key=str(uuid.uuid4()), queue_schema=SCHEMA
        )
        session.commit()
    triggered = time.perf_counter()
    engine.dispose()
    worker = subprocess.Popen(
        [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
        env={**os.environ, "DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while _left(conn, journey):
                if time.perf_counter() - started > DEADLINE:
                    raise RuntimeError("the scenario did not finish within the deadline")
                time.sleep(0.1)
        finished = time.perf_counter()
    finally:
        worker.terminate()
        worker.wait(60)
    return {
        "trigger_s": triggered - started,
        "end_to_end_s": finished - started,
        "deliveries_per_s": 3 * count / (finished - started),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    dsn = bench_dsn()
    runs: dict[str, list[dict[str, float]]] = {"journey": [], "independent": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine
        runs["journey"].append(measure(dsn, args.count, journey=True))
        runs["independent"].append(measure(dsn, args.count, journey=False))
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    ratio = summary["journey"]["end_to_end_s"] / summary["independent"]["end_to_end_s"]
    print(json.dumps({"count": args.count, "repeats": args.repeats, **summary, "ratio": ratio}, indent=2))
    print(
        f"{args.count} notifications x 3 steps: journey {summary['journey']['end_to_end_s']:.1f} s, "
        f"independent {summary['independent']['end_to_end_s']:.1f} s (x{ratio:.2f})"
    )


if __name__ == "__main__":
    main()
