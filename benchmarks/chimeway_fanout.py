"""W4c: Chimeway fan-out — one event to many recipients: planned, committed, then delivered.

For each size N (quick: 2,000 and 10,000 recipients; full: 10,000 and 100,000), in a fresh schema
where 1 % of the recipients opted out of the channel and another 1 % of the category:

* **trigger**: ``trigger()`` of one event to N recipients, one channel each, in a SQLAlchemy
  session, timed from the call to the end of the commit: deliveries/s and rows/s (the event,
  N notifications, N deliveries, one job per pending delivery).
* **raw floor**: the same rows planned by one plain-psycopg statement, server-side: the event,
  notifications, deliveries with the same preference joins, reasons and metadata, dispatch jobs
  with a unique key, the queue's wake-up. Ids are time-ordered like the trigger's, so both insert
  into their indexes the same way. No notifier, no validation, no redaction: what the database
  needs for these rows, the bound the trigger is measured against.
* **end to end**: one ``python -m chimeway.worker`` (default settings; the channel goes to the
  logger adapter) is started and idle; the trigger commits; timed from the call until every
  pending delivery has succeeded (the last delivery's ``updated_at``, on the database clock).

Trigger and floor alternate within each repeat, so load from other work falls on both; ratios are
taken per repeat and reported as median (min-max), like every number here.

    python -m benchmarks.chimeway_fanout [--full] [--repeats 3] [--e2e-repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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
from chimeway.dispatch import QUEUE, dispatch_job
from chimeway.migrations import migrate_all
from chimeway.notifier import Notifier, Recipient
from chimeway.store import queries_for
from chimeway.trigger import trigger
from chimeway.worker import engine_for, session_factory
from pgqueue.localdb import find_database
from pgqueue.store import channel_name

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_chimeway_fanout"
KEY = "announcement"
CATEGORY = "news"
CHANNEL = "in_app"  # no route configured: the worker's default, the logger adapter
OPT_OUT_EVERY = 100  # 1 % opt out of the channel, another 1 % of the category


class Announcement(Notifier):
    notification_key = KEY
    category = CATEGORY

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(f"user:{u}") for u in range(1, params["count"] + 1)]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return [CHANNEL]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": params["subject"], "body": "Our spring release is out.", "to": recipient.identity}


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def _fresh_schema(dsn: str, count: int) -> None:
    """A migrated schema and the opt-outs: user:1, 101, … (channel) and user:51, 151, … (category)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, SCHEMA)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (recipient_id, notification_key, channel, enabled) "
                "SELECT 'user:' || g, %s, %s, false FROM generate_series(1, %s::integer, %s::integer) AS g"
            ).format(_table("chimeway_notification_preferences")),
            (KEY, CHANNEL, count, OPT_OUT_EVERY),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (recipient_id, notification_category, enabled) "
                "SELECT 'user:' || g, %s, false "
                "FROM generate_series(%s::integer, %s::integer, %s::integer) AS g"
            ).format(_table("chimeway_category_preferences")),
            (CATEGORY, OPT_OUT_EVERY // 2 + 1, count, OPT_OUT_EVERY),
        )


def _expected_jobs(count: int) -> int:
    channel = len(range(1, count + 1, OPT_OUT_EVERY))
    category = len(range(OPT_OUT_EVERY // 2 + 1, count + 1, OPT_OUT_EVERY))
    return count - channel - category


def _rates(count: int, jobs: int, seconds: float) -> dict[str, Any]:
    return {
        "recipients": count,
        "deliveries": count,
        "jobs": jobs,
        "seconds": seconds,
        "deliveries_per_second": count / seconds,
        "rows_per_second": (1 + 2 * count + jobs) / seconds,
    }


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
    _fresh_schema(dsn, count)
    seconds, jobs = _run_trigger(dsn, count, f"fanout-{count}")
    if jobs != _expected_jobs(count):
        raise RuntimeError(f"trigger enqueued {jobs} jobs, expected {_expected_jobs(count)}")
    return _rates(count, jobs, seconds)


# The floor: every row of the fan-out in one statement, generated by the server. Ids are built
# from a random time-ordered prefix and the recipient's number, as consecutive as the trigger's.
FLOOR = """
WITH event AS (
    INSERT INTO {events} (notification_key, notification_version, idempotency_key, payload)
    VALUES (%(key)s, 1, %(idempotency_key)s, %(payload)s::jsonb)
    RETURNING id
),
notifications AS (
    INSERT INTO {notifications} (id, event_id, recipient_identity, recipient_type, metadata)
    SELECT (%(notification_prefix)s || lpad(to_hex(g), 12, '0'))::uuid, e.id, 'user:' || g, 'user',
           jsonb_build_object('subject', 'Spring release', 'body', 'Our spring release is out.',
                              'to', 'user:' || g)
    FROM event AS e, generate_series(1, %(count)s) AS g
    RETURNING id, event_id, recipient_identity
),
deliveries AS (
    INSERT INTO {deliveries} (id, notification_id, channel, status, suppression_reason, metadata, actor_id)
    SELECT (%(delivery_prefix)s || right(n.id::text, 12))::uuid, n.id, %(channel)s,
           CASE WHEN np.enabled IS FALSE OR cp.enabled IS FALSE THEN 'suppressed' ELSE 'pending' END,
           CASE WHEN np.enabled IS FALSE THEN 'channel_disabled'
                WHEN cp.enabled IS FALSE THEN 'category_disabled' END,
           jsonb_build_object('notification_key', %(key)s, 'event_id', n.event_id::text)
               || CASE WHEN np.enabled IS FALSE OR cp.enabled IS FALSE
                       THEN '{{"policy_checkpoint": "planning"}}'::jsonb ELSE '{{}}'::jsonb END,
           n.recipient_identity
    FROM notifications AS n
    LEFT JOIN {notification_preferences} AS np
        ON np.recipient_id = n.recipient_identity AND np.notification_key = %(key)s
        AND np.channel = %(channel)s
    LEFT JOIN {category_preferences} AS cp
        ON cp.recipient_id = n.recipient_identity AND cp.notification_category = %(category)s
    RETURNING id, status
),
jobs AS (
    INSERT INTO {jobs} (worker, queue, args, max_attempts, priority, unique_key, unique_states)
    SELECT %(worker)s, %(queue)s, jsonb_build_object('delivery_id', d.id::text), %(max_attempts)s,
           %(priority)s, decode(md5(d.id::text), 'hex'), %(unique_states)s::{job_state}[]
    FROM deliveries AS d
    WHERE d.status = 'pending'
    RETURNING id
)
SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM jobs),
       pg_notify(%(wake_channel)s, json_build_object('queue', %(queue)s::text)::text)
"""


def _uuid_prefix() -> str:
    """The first 20 hex digits of a UUIDv7 made now, dashed, ready for a 12-digit counter."""
    head = f"{time.time_ns() // 1_000_000:012x}7{secrets.token_hex(2)[:3]}8{secrets.token_hex(2)[:3]}"
    return f"{head[:8]}-{head[8:12]}-{head[12:16]}-{head[16:20]}-"


def measure_floor(dsn: str, count: int) -> dict[str, Any]:
    _fresh_schema(dsn, count)
    template = dispatch_job("00000000-0000-0000-0000-000000000000")
    assert template.unique is not None
    names = {
        name: _table(f"chimeway_{name}")
        for name in ("events", "notifications", "deliveries", "notification_preferences")
    }
    statement = sql.SQL(FLOOR).format(
        **names,
        category_preferences=_table("chimeway_category_preferences"),
        jobs=_table("jobs"),
        job_state=_table("job_state"),
    )
    params = {
        "key": KEY,
        "idempotency_key": f"floor-{count}",
        "payload": json.dumps({"count": count, "subject": "Spring release"}),
        "notification_prefix": _uuid_prefix(),
        "delivery_prefix": _uuid_prefix(),
        "count": count,
        "channel": CHANNEL,
        "category": CATEGORY,
        "worker": template.worker,
        "queue": template.queue,
        "max_attempts": template.max_attempts,
        "priority": template.priority,
        "unique_states": [state.value for state in template.unique.states],
        "wake_channel": channel_name(SCHEMA, "insert"),
    }
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        started = time.perf_counter()
        row = conn.execute(statement, params).fetchone()
        conn.commit()
        seconds = time.perf_counter() - started
    assert row is not None
    if (row[0], row[1]) != (count, _expected_jobs(count)):
        raise RuntimeError(f"the floor planned {row[0]} deliveries and {row[1]} jobs")
    return _rates(count, int(row[1]), seconds)


def _open_deliveries(conn: psycopg.Connection[Any]) -> int:
    return sum(int(n) for _, n in conn.execute(queries_for(SCHEMA).count_open_deliveries).fetchall())


def _wait(condition: Any, what: str, timeout: float, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None:
            stderr = worker.stderr.read().decode()[-500:] if worker.stderr else ""
            raise RuntimeError(f"the worker exited while waiting for {what}: {stderr}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def measure_end_to_end(dsn: str, count: int, timeout: float) -> dict[str, Any]:
    _fresh_schema(dsn, count)
    config = Path(tempfile.mkdtemp()) / "chimeway.toml"
    config.write_text(f'schema = "{SCHEMA}"\n')
    worker = subprocess.Popen(
        [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
        env={**os.environ, "DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    producers = sql.SQL("SELECT count(*) FROM {} WHERE queue = %s").format(_table("pgqueue_producers"))
    finished = sql.SQL("SELECT max(updated_at), count(*) FILTER (WHERE status = 'succeeded') FROM {}").format(
        _table("chimeway_deliveries")
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:

            def ready() -> bool:
                row = conn.execute(producers, (QUEUE,)).fetchone()
                return bool(row and row[0])

            _wait(ready, "the worker to start", 60, worker)
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            started_at = row[0]
            commit_seconds, jobs = _run_trigger(dsn, count, f"fanout-e2e-{count}")
            _wait(lambda: _open_deliveries(conn) == 0, "every delivery to end", timeout, worker)
            row = conn.execute(finished).fetchone()
            assert row is not None
            last, succeeded = row
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
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
        "| Recipients | Commit s | Deliveries/s | Rows/s | Raw floor deliveries/s | Trigger ÷ floor "
        "| End to end s | Delivered/s end to end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, runs in rows.items():
        planned, floor, e2e = runs["trigger"], runs["floor"], runs["e2e"]
        ratios = [
            p["deliveries_per_second"] / f["deliveries_per_second"] * 100
            for p, f in zip(planned, floor, strict=True)
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
            _stats([r["deliveries_per_second"] for r in floor]),
            _stats(ratios) + " %",
            *e2e_cells,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
        n: {"trigger": [], "floor": [], "e2e": []} for n in sizes
    }
    for repeat in range(args.repeats):
        for count in sizes:
            # Alternate which goes first, so neither always runs right after a schema was built.
            order = ("trigger", "floor") if repeat % 2 == 0 else ("floor", "trigger")
            for kind in order:
                result = measure_trigger(dsn, count) if kind == "trigger" else measure_floor(dsn, count)
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
        f"{args.repeats} repeats of trigger and raw floor (alternating), {e2e_repeats} end to end "
        "with one `python -m chimeway.worker` at its defaults (logger adapter); median (min-max). "
        f"Load average {load_before[0]} at start, {load_after[0]} at the end, on {os.cpu_count()} cores.",
        "",
        *_table_lines(rows),
        "",
        "Commit s: `trigger()` called until the commit returned. Rows/s counts the event, the "
        "notifications, the deliveries and the jobs. Raw floor: the same rows in one plain-psycopg "
        "statement. End to end: from the call until the last delivery succeeded.",
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
