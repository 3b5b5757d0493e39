"""Dashboard pages at scale: each page rendered server-side with 1,000,000 jobs in the table.

The jobs are written by the server (generate_series) in a realistic mix: most finished over the
last day, a backlog of available jobs across queues, failures with errors, scheduled and
retryable jobs, a few executing, plus 100,000 Chimeway deliveries. Every page is then requested
in-process through the ASGI app (no network, no browser: the time is the app's, database
included), sequentially, and its latency reported as p50 / p99. The issue's target is 200 ms.
The app runs with ``counts_seconds=0`` unless told otherwise, so no request reuses another's
counts (``--counts-seconds 1`` measures the app's default sharing).

    python -m benchmarks.web [--full] [--rows N] [--counts-seconds S]

Quick mode takes 20 samples per page, ``--full`` 100. The data set is kept between runs (schema
``bench_web``) and rebuilt only when its size differs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

import chimeway.web
from chimeway.migrations import CHIMEWAY
from pgqueue.localdb import find_database
from pgqueue.migrate import PGQUEUE, migrate
from pgqueue.web import create_app

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_web"
TOKEN = "benchmark-token-0123456789"
TARGET_MS = 200.0

_FILL = """
INSERT INTO {jobs} (state, queue, worker, args, tags, errors, attempt, max_attempts,
                    inserted_at, scheduled_at, attempted_at, attempted_by,
                    completed_at, cancelled_at, discarded_at)
SELECT s.state::{job_state}, 'q' || (g %% 8), 'bench.Worker' || (g %% 5),
       jsonb_build_object('user_id', g %% 10000, 'seq', g),
       CASE WHEN g %% 10 = 0 THEN ARRAY['vip'] ELSE ARRAY[]::text[] END,
       CASE WHEN s.state IN ('discarded', 'retryable')
            THEN jsonb_build_array(
                jsonb_build_object('attempt', 1, 'at', now(), 'error', 'RuntimeError: boom'))
            ELSE '[]'::jsonb END,
       CASE WHEN s.state IN ('available', 'scheduled') THEN 0 ELSE 1 END,
       CASE WHEN s.state = 'discarded' THEN 1 ELSE 20 END,
       now() - (g %% 86400) * interval '1 second',
       CASE WHEN s.state = 'scheduled' THEN now() + interval '1 hour'
            ELSE now() - (g %% 86400) * interval '1 second' END,
       CASE WHEN s.state IN ('available', 'scheduled') THEN NULL
            ELSE now() - (g %% 86400) * interval '1 second' + interval '1 second' END,
       CASE WHEN s.state IN ('available', 'scheduled') THEN NULL ELSE ARRAY['node-' || (g %% 3), 'p'] END,
       CASE WHEN s.state = 'completed'
            THEN now() - (g %% 86400) * interval '1 second' + interval '2 seconds' END,
       CASE WHEN s.state = 'cancelled'
            THEN now() - (g %% 86400) * interval '1 second' + interval '2 seconds' END,
       CASE WHEN s.state = 'discarded'
            THEN now() - (g %% 86400) * interval '1 second' + interval '2 seconds' END
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (SELECT CASE
    WHEN g %% 100 < 88 THEN 'completed'
    WHEN g %% 100 < 93 THEN 'available'
    WHEN g %% 100 < 95 THEN 'discarded'
    WHEN g %% 100 < 97 THEN 'retryable'
    WHEN g %% 100 < 98 THEN 'scheduled'
    WHEN g %% 100 < 99 THEN 'cancelled'
    WHEN g %% 10000 = 99 THEN 'executing'
    ELSE 'completed' END AS state) AS s
"""

_DELIVERIES = """
WITH ev AS (
    INSERT INTO {events} (notification_key, notification_version, idempotency_key)
    SELECT 'comment_posted', 1, 'bench-' || g FROM generate_series(1, %(events)s) AS g
    RETURNING id
), n AS (
    INSERT INTO {notifications} (event_id, recipient_identity, recipient_type)
    SELECT ev.id, 'user:' || r, 'user' FROM ev, generate_series(1, 10) AS r
    RETURNING id
)
INSERT INTO {deliveries} (notification_id, channel, status)
SELECT n.id, CASE WHEN random() < 0.5 THEN 'email' ELSE 'in_app' END,
       (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'pending', 'cancelled'])
           [1 + floor(random() * 6)::int]
FROM n
"""


def _prepare(dsn: str, rows: int) -> None:
    jobs = sql.Identifier(SCHEMA, "jobs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            found = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(jobs)).fetchone()
        except psycopg.errors.UndefinedTable:
            found = None
        if found is not None and found[0] == rows:
            with psycopg.connect(dsn) as conn:
                migrate(conn, SCHEMA, PGQUEUE)  # indexes added since the data set was built
                migrate(conn, SCHEMA, CHIMEWAY)
            return
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, SCHEMA, PGQUEUE)
        migrate(conn, SCHEMA, CHIMEWAY)
        started = time.perf_counter()
        conn.execute(
            sql.SQL(_FILL).format(jobs=jobs, job_state=sql.Identifier(SCHEMA, "job_state")), {"rows": rows}
        )
        names = {
            k: sql.Identifier(SCHEMA, f"chimeway_{k}") for k in ("events", "notifications", "deliveries")
        }
        conn.execute(sql.SQL(_DELIVERIES).format(**names), {"events": 10_000})
        conn.commit()
        print(f"wrote {rows:,} jobs and 100,000 deliveries in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs))
        for table in ("chimeway_events", "chimeway_notifications", "chimeway_deliveries"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, table)))


def _pages(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        table = sql.Identifier(SCHEMA, "jobs")
        (max_id,) = conn.execute(sql.SQL("SELECT max(id) FROM {}").format(table)).fetchone() or (0,)
        (failed_id,) = conn.execute(
            sql.SQL("SELECT max(id) FROM {} WHERE state = 'discarded'").format(table)
        ).fetchone() or (0,)
        delivery = conn.execute(
            sql.SQL("SELECT id FROM {} WHERE status = 'failed' LIMIT 1").format(
                sql.Identifier(SCHEMA, "chimeway_deliveries")
            )
        ).fetchone()
    pages = [
        ("queues (counts, chart)", "/"),
        ("jobs, all states", "/jobs"),
        ("jobs, completed", "/jobs?state=completed"),
        ("jobs, completed, deep page", f"/jobs?state=completed&before={max_id // 2}"),
        ("jobs, discarded", "/jobs?state=discarded"),
        ("jobs, available in q3", "/jobs?state=available&queue=q3"),
        ("jobs, completed tagged vip", "/jobs?state=completed&tags=vip"),
        ("jobs, retryable tagged vip (none match)", "/jobs?state=retryable&tags=vip"),
        ("jobs, discarded, args search", '/jobs?state=discarded&args={"user_id":42}'),
        ("job detail", f"/jobs/{failed_id}"),
        ("nodes", "/nodes"),
        ("live counts (JSON)", "/api/counts"),
        ("/metrics", "/metrics"),
        ("deliveries", "/chimeway/"),
        ("deliveries, failed email", "/chimeway/?status=failed&channel=email"),
    ]
    if delivery is not None:
        pages.append(("delivery timeline", f"/chimeway/deliveries/{delivery[0]}"))
    return pages


async def _measure(dsn: str, samples: int, counts_seconds: float) -> list[dict[str, Any]]:
    # counts_seconds=0 (the default here): every request counts afresh, as a lone operator's page
    # does (its polls are further apart than the shared second); no time measured is a cache hit.
    app = create_app(
        dsn, schema=SCHEMA, token=TOKEN, extensions=[chimeway.web.extension()], counts_seconds=counts_seconds
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {TOKEN}"}
    results = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:
        for name, path in _pages(dsn):
            for _ in range(3):  # warm: pool, prepared plans, templates
                response = await client.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
            timings = []
            for _ in range(samples):
                started = time.perf_counter()
                response = await client.get(path)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            timings.sort()
            p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
            results.append(
                {
                    "page": name,
                    "path": path,
                    "p50_ms": statistics.median(timings),
                    "p99_ms": p99,
                    "bytes": len(response.content),
                }
            )
            print(f"  {name:<42} p50 {results[-1]['p50_ms']:7.1f} ms   p99 {p99:7.1f} ms")
    await app.state.dashboard.pool.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web")
    parser.add_argument("--full", action="store_true", help="100 samples per page (default 20)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs in the table (default 1,000,000)")
    parser.add_argument(
        "--counts-seconds",
        type=float,
        default=0.0,
        help="the app's counts_seconds (default 0: nothing reused; the app's own default is 1)",
    )
    args = parser.parse_args(argv)
    samples = 100 if args.full else 20
    dsn = find_database().dsn
    _prepare(dsn, args.rows)
    print(f"dashboard pages with {args.rows:,} jobs, {samples} sequential samples each:")
    results = asyncio.run(_measure(dsn, samples, args.counts_seconds))
    mode = "full" if args.full else "quick"
    over = [r["page"] for r in results if r["p99_ms"] > TARGET_MS]
    lines = [
        f"# Dashboard pages with {args.rows:,} jobs ({mode} mode)",
        "",
        f"Run on {datetime.now(UTC).isoformat(timespec='seconds')}: each page requested {samples} times "
        "in-process (ASGI, database included, no network), after 3 warm-up requests, with "
        f"counts_seconds={args.counts_seconds:g}. Target: 200 ms.",
        "",
        "| Page | p50 ms | p99 ms | HTML bytes |",
        "|---|---|---|---|",
        *(f"| {r['page']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['bytes']:,} |" for r in results),
        "",
        f"Over the target at p99: {', '.join(over) if over else 'none'}.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"web-{stamp}-{mode}", f"web-latest-{mode}"):
        (RESULTS / f"{name}.md").write_text(markdown)
        (RESULTS / f"{name}.json").write_text(
            json.dumps(
                {
                    "mode": mode,
                    "rows": args.rows,
                    "samples": samples,
                    "counts_seconds": args.counts_seconds,
                    "pages": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
