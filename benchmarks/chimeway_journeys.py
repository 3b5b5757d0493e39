"""W4j: a 3-step journey for N notifications, end to end, against three independent deliveries.

In one run, on one database (``chimeway_bench``, or ``--database``), per repeat, each in a fresh
schema, the two scenarios taking turns:

* **journey**: one trigger of a notifier whose journey has three steps (``in_app`` → ``email`` →
  ``sms``, no wait, no condition) to N recipients; then one ``python -m chimeway.worker`` process
  (logger adapter, defaults) walks every run to ``completed``: N first-step jobs, 3N dispatch jobs
  (each delivery in the dispatch batches, each job then asking for the run's next move), the moves
  made in batches (:mod:`chimeway.journeys.moves`).
* **independent**: one trigger of a notifier with the same three channels to N recipients (3N
  deliveries planned at once), delivered by the same worker.

Times run from the trigger's start to the last run completed (or the last delivery succeeded);
the trigger's own time is reported apart, and the server's committed transactions per delivery.
The journey sends one step after another, by design: each run goes through the queue three times
in a row where an independent delivery goes once. Results go to
``benchmarks/results/chimeway-journeys-<time>.md/json`` and ``chimeway-journeys-latest.*``.

    python -m benchmarks.chimeway_journeys [--count N] [--repeats N] [--database NAME]
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
from datetime import UTC, datetime
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

RESULTS = Path(__file__).resolve().parent / "results"
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
    commits_before = _commits(dsn)
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
    commits = _commits(dsn, settle=True) - commits_before
    return {
        "trigger_s": triggered - started,
        "end_to_end_s": finished - started,
        "deliveries_per_s": 3 * count / (finished - started),
        "transactions_per_delivery": commits / (3 * count),
    }


def _commits(dsn: str, settle: bool = False) -> int:
    """Transactions committed in this database so far (the server flushes its counters about once
    a second: ``settle`` waits for that)."""
    if settle:
        time.sleep(1.5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _dsn(database: str | None) -> str:
    """The benchmark's database: ``chimeway_bench`` by default, else ``database`` (created when missing)."""
    dsn = bench_dsn()
    if database is None:
        return dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--database", default=None, help="a database of its own (default: chimeway_bench)")
    args = parser.parse_args(argv)
    dsn = _dsn(args.database)
    now = datetime.now(UTC)
    load_before = [round(v, 2) for v in os.getloadavg()]
    runs: dict[str, list[dict[str, float]]] = {"journey": [], "independent": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine
        runs["journey"].append(measure(dsn, args.count, journey=True))
        runs["independent"].append(measure(dsn, args.count, journey=False))
    load_after = [round(v, 2) for v in os.getloadavg()]
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    ratios = [
        j["end_to_end_s"] / i["end_to_end_s"]
        for j, i in zip(runs["journey"], runs["independent"], strict=True)
    ]
    ratio = statistics.median(ratios)
    report = {
        "count": args.count,
        "repeats": args.repeats,
        "load_average": {"start": load_before, "end": load_after},
        "cpu_cores": os.cpu_count(),
        **summary,
        "ratio": ratio,
        "ratios": ratios,
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    markdown = _markdown(now, args.count, args.repeats, summary, runs, ratios, (load_before, load_after))
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for name in (f"chimeway-journeys-{stamp}", "chimeway-journeys-latest"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))


def _markdown(
    now: datetime,
    count: int,
    repeats: int,
    summary: Mapping[str, Mapping[str, float]],
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    ratios: Sequence[float],
    load: tuple[Sequence[float], Sequence[float]],
) -> str:
    def cell(name: str, key: str, digits: int) -> str:
        values = [r[key] for r in runs[name]]
        spread = f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})" if len(values) > 1 else ""
        return f"{summary[name][key]:,.{digits}f}{spread}"

    lines = [
        "# W4j: Chimeway journeys against independent deliveries",
        "",
        f"Run on {now.isoformat(timespec='seconds')}; {count:,} notifications, 3 steps each (`in_app` → "
        "`email` → `sms`, no wait, no condition) against the same 3 channels planned at once; "
        f"{repeats} repeat(s), interleaved, one `python -m chimeway.worker` at its defaults (logger "
        f"adapter); median (min-max). Load average {load[0][0]} at start, {load[1][0]} at the end, "
        f"on {os.cpu_count()} cores.",
        "",
        "| Plan | Trigger s | End to end s | Deliveries/s | Server transactions per delivery |",
        "|---|---|---|---|---|",
    ]
    for name in ("journey", "independent"):
        lines.append(
            f"| {name} | {cell(name, 'trigger_s', 2)} | {cell(name, 'end_to_end_s', 1)} | "
            f"{cell(name, 'deliveries_per_s', 0)} | {cell(name, 'transactions_per_delivery', 2)} |"
        )
    lines += [
        "",
        f"Journey ÷ independent, end to end: **x{statistics.median(ratios):.2f}** (per repeat: "
        + ", ".join(f"x{r:.2f}" for r in ratios)
        + ").",
        "",
        "End to end: from the trigger's call until the last run completed (journey) or the last "
        "delivery succeeded (independent). Server transactions: `pg_stat_database.xact_commit` of "
        "the benchmark's database from the worker's start to the end (the benchmark's own polling "
        "included), over the 3N deliveries.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
