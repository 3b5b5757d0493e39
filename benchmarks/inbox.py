"""The inbox under a million notifications: one recipient's page and counts, with and without statistics.

Full mode loads 1,000,000 notifications (quick: 200,000) over 10,000 recipients (quick: 2,000),
about 100 each, ten per event, over 90 days, with a realistic mix (older ones mostly seen and
read, a third of those past 30 days archived, recent ones mostly new; five in six in a category)
and one heavy recipient with 20,000 (quick: 4,000), nearly all read, a fifth archived, one in 200
of a rare category. The server writes the rows (one statement per table), with autovacuum off on
both tables, and they are measured twice: first with no statistics at all (never analyzed), then
after ANALYZE. Each operation is called
for random recipients through the public API on one SQLAlchemy session (the timing includes
SQLAlchemy, psycopg and the BEGIN it sends); p50/p99 per repeat, then the median of the repeats
and their range. Each operation's plan is recorded in both states.

Then the cost of the inbox for a fan-out: 100,000 notifications written by one INSERT into a
schema at chimeway 0001, at 0002 with its NOTIFY trigger disabled, at 0002 as shipped, and at
0002 with every notification in a category (as planning will write them).

    .venv/bin/python -m benchmarks.inbox [--full] [--repeats 3] [--calls N] [--part all|reads|fanout]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from benchmarks.inbox_data import FANOUT_ROWS, SCHEMA, TABLES, drop, fanout_cost, load, statistics_state
from chimeway import inbox
from pgqueue.localdb import find_database

RESULTS = Path(__file__).resolve().parent / "results"


def _p(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass(frozen=True)
class Operation:
    """One call of the public API, timed; ``prepare`` (untimed) fetches what the call needs."""

    name: str
    call: Callable[[Session, str, Any], object]
    prepare: Callable[[Session, str], Any] | None = None
    recipient: str | None = None  # always this one, else a random recipient per call


def _unread_one(session: Session, who: str) -> uuid.UUID | None:
    page = inbox.list_for_recipient(session, who, unread_only=True, limit=1)
    return page.items[0].id if page.items else None


def operations(change_cursor: str, heavy: str) -> list[Operation]:
    def first_page(session: Session, who: str, _: Any) -> object:
        return inbox.list_for_recipient(session, who)

    def counts(session: Session, who: str, _: Any) -> object:
        return inbox.counts(session, who)

    return [
        # the floor under every row: a trivial statement through the same session (BEGIN included)
        Operation("baseline: SELECT 1", lambda s, who, _: s.execute(text("SELECT 1")).all()),
        Operation("first page (50)", first_page),
        Operation("counts", counts),
        Operation(
            "second page",
            lambda s, who, cursor: inbox.list_for_recipient(s, who, before=cursor),
            prepare=lambda s, who: inbox.list_for_recipient(s, who).next_cursor,
        ),
        Operation(
            "unread only, first page", lambda s, who, _: inbox.list_for_recipient(s, who, unread_only=True)
        ),
        Operation(
            "one category, first page", lambda s, who, _: inbox.list_for_recipient(s, who, category="billing")
        ),
        Operation(
            "with archived, first page",
            lambda s, who, _: inbox.list_for_recipient(s, who, include_archived=True),
        ),
        Operation("changes_since (a poll)", lambda s, who, _: inbox.changes_since(s, who, change_cursor)),
        Operation(
            "mark_read (commits)",
            lambda s, who, nid: inbox.mark_read(s, who, nid) if nid else None,
            prepare=_unread_one,
        ),
        Operation("heavy recipient: first page", first_page, recipient=heavy),
        Operation("heavy recipient: counts", counts, recipient=heavy),
        Operation(
            "heavy recipient: second page",
            lambda s, who, cursor: inbox.list_for_recipient(s, who, before=cursor),
            prepare=lambda s, who: inbox.list_for_recipient(s, who).next_cursor,
            recipient=heavy,
        ),
        Operation(
            "heavy recipient: a rare category",
            lambda s, who, _: inbox.list_for_recipient(s, who, category="security"),
            recipient=heavy,
        ),
    ]


def measure_sync(
    session: Session, ops: list[Operation], recipients: int, calls: int, seed: int
) -> dict[str, list[float]]:
    """``calls`` calls of every operation, interleaved (so load from elsewhere falls on all alike)."""
    rng = random.Random(seed)
    latencies: dict[str, list[float]] = {op.name: [] for op in ops}
    for _ in range(calls):
        for op in ops:
            who = op.recipient or f"user:{rng.randrange(recipients)}"
            prepared = op.prepare(session, who) if op.prepare else None
            session.rollback()  # end the read transaction: the call starts as a request would
            started = time.perf_counter()
            op.call(session, who, prepared)
            latencies[op.name].append(time.perf_counter() - started)
            session.rollback()
    return latencies


async def measure_async(dsn: str, recipients: int, calls: int, seed: int) -> dict[str, list[float]]:
    engine = create_async_engine(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(dsn), pool_size=1
    ).execution_options(schema_translate_map={None: SCHEMA})
    rng = random.Random(seed)
    latencies: dict[str, list[float]] = {"async first page (50)": [], "async counts": []}
    try:
        async with AsyncSession(engine) as session:
            for _ in range(calls):
                for name in latencies:
                    who = f"user:{rng.randrange(recipients)}"
                    started = time.perf_counter()
                    if name == "async counts":
                        await inbox.acounts(session, who)
                    else:
                        await inbox.alist_for_recipient(session, who)
                    latencies[name].append(time.perf_counter() - started)
                    await session.rollback()
    finally:
        await engine.dispose()
    return latencies


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _nodes(plan: dict[str, Any]) -> Iterator[str]:
    index = f" using {plan['Index Name']}" if "Index Name" in plan else ""
    relation = f" on {plan['Relation Name']}" if "Relation Name" in plan and not index else ""
    backward = " Backward" if plan.get("Scan Direction") == "Backward" else ""
    yield f"{plan['Node Type']}{backward}{index}{relation}"
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def plans(engine: Engine, ops: list[Operation], recipients: int) -> dict[str, dict[str, Any]]:
    """Each operation's statements as the server plans them for one recipient (EXPLAIN, and for
    reads EXPLAIN ANALYZE with buffers: how much the call really read)."""
    found: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for op in ops:
            who = op.recipient or f"user:{recipients // 3}"
            prepared = op.prepare(session, who) if op.prepare else None
            session.rollback()
            with captured(session.get_bind()) as statements:  # type: ignore[arg-type]
                op.call(session, who, prepared)
            session.rollback()
            raw = session.connection().connection.driver_connection
            assert raw is not None
            shapes, buffers = [], 0
            for statement, params in statements:
                reading = statement.lstrip().upper().startswith(("SELECT", "WITH"))
                options = "ANALYZE, BUFFERS, FORMAT JSON" if reading else "FORMAT JSON"
                (result,) = raw.execute(f"EXPLAIN ({options}) {statement}", params).fetchone()
                top = result[0]["Plan"]
                shapes.append(" > ".join(_nodes(top)))
                buffers += top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
            session.rollback()
            found[op.name] = {"plan": " ; ".join(shapes), "buffers": buffers}
    return found


def _summary(runs: list[list[float]]) -> dict[str, Any]:
    """Per repeat p50/p99 in ms, then their median and range."""
    per_repeat = [{"p50": _p(r, 50) * 1000, "p99": _p(r, 99) * 1000, "max": max(r) * 1000} for r in runs]
    return {
        "p50": _spread([r["p50"] for r in per_repeat]),
        "p99": _spread([r["p99"] for r in per_repeat]),
        "max": _spread([r["max"] for r in per_repeat]),
        "calls_per_repeat": len(runs[0]),
        "repeats": per_repeat,
    }


def measure_state(
    dsn: str, engine: Engine, ops: list[Operation], recipients: int, calls: int, repeats: int
) -> dict[str, Any]:
    runs: dict[str, list[list[float]]] = {}
    for repeat in range(repeats):
        with Session(engine) as session:
            sync = measure_sync(session, ops, recipients, calls, seed=repeat)
        asynchronous = asyncio.run(measure_async(dsn, recipients, calls, seed=repeat))
        for name, values in {**sync, **asynchronous}.items():
            runs.setdefault(name, []).append(values)
        first = _summary([sync["first page (50)"]])
        print(f"  repeat {repeat + 1}: first page p50 {first['p50']['median']:.2f} ms, "
              f"p99 {first['p99']['median']:.2f} ms", flush=True)  # fmt: skip
    return {
        "latency_ms": {name: _summary(values) for name, values in runs.items()},
        "plans": plans(engine, ops, recipients),
        "statistics": statistics_state(dsn),
    }


def _cell(spread: dict[str, float]) -> str:
    return f"{spread['median']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})"


def report(result: dict[str, Any]) -> str:
    lines = [f"# The inbox among {result['notifications']:,} notifications ({result['mode']} mode)", ""]
    if "states" in result:
        lines += _report_reads(result)
    if "fanout_seconds" in result:
        lines += _report_fanout(result)
    return "\n".join(lines) + "\n"


def _report_reads(result: dict[str, Any]) -> list[str]:
    states = result["states"]
    lines = [
        f"Run on {result['when']}: {result['notifications']:,} notifications over {result['recipients']:,} "
        f"recipients (about {result['notifications'] // result['recipients']} each; a heavy recipient has "
        f"{result['heavy']:,}), loaded in {result['load_seconds']:.0f} s. Load average (1, 5, 15 min) at "
        f"start {result['load_average_at_start']}, at end {result['load_average_at_end']}; PostgreSQL "
        f"{result['postgresql']}. "
        f"{result['calls']:,} calls per operation per repeat, {result['repeats']} repeats, operations "
        "interleaved, each call for a random recipient through the public sync API (async where it says), "
        "one session, the read transaction ended between calls. Milliseconds: the median of the "
        "repeats' p50 (p99), and their range.",
        "",
        "| Operation | no statistics p50 | no statistics p99 | analyzed p50 | analyzed p99 | same plan |",
        "|---|---|---|---|---|---|",
    ]
    none, analyzed = states["no statistics"], states["analyzed"]
    for name, row in none["latency_ms"].items():
        after = analyzed["latency_ms"][name]
        plan_before = none["plans"].get(name, {}).get("plan")
        plan_after = analyzed["plans"].get(name, {}).get("plan")
        same = "—" if plan_before is None else ("yes" if plan_before == plan_after else "**no**")
        lines.append(
            f"| {name} | {_cell(row['p50'])} | {_cell(row['p99'])} | {_cell(after['p50'])} | "
            f"{_cell(after['p99'])} | {same} |"
        )
    lines += [
        "",
        "No statistics: the tables were never analyzed (autovacuum off on both, `reltuples` "
        f"{none['statistics']['chimeway_notifications']['reltuples']:.0f}, "
        f"{none['statistics']['chimeway_notifications']['pg_statistic_rows']} `pg_statistic` rows); "
        "then `ANALYZE` and the same again.",
        "",
        "## Plans (the same with and without statistics unless marked), shared buffers read by one call",
        "",
        "| Operation | plan | buffers |",
        "|---|---|---|",
    ]
    for name, found in analyzed["plans"].items():
        before = none["plans"][name]
        plan = found["plan"] if found["plan"] == before["plan"] else f"{before['plan']} → **{found['plan']}**"
        lines.append(f"| {name} | {plan} | {before['buffers']} / {found['buffers']} |")
    return lines


def _report_fanout(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## A fan-out: {FANOUT_ROWS:,} notifications in one INSERT",
        "",
        "One statement inserting 100,000 notifications (100,000 recipients, one event) and its commit, "
        f"into a fresh schema; seconds, the median of {result['fanout_repeats']} repeats (range), the "
        "variants interleaved, and the cost per notification over chimeway 0001.",
        "",
        "| Recipient order | chimeway 0001 | 0002, NOTIFY trigger off | 0002 | 0002 with a category "
        "| 0002 over 0001 | with a category over 0001 |",
        "|---|---|---|---|---|---|---|",
    ]
    for order, variants in result["fanout_seconds"].items():
        medians = [statistics.median(v) for v in variants.values()]
        cells = [f"{_cell(_spread(v))}" for v in variants.values()]
        over = []
        for i in (2, 3):
            percent = (medians[i] / medians[0] - 1) * 100
            each_us = (medians[i] - medians[0]) / FANOUT_ROWS * 1e6
            over.append(f"{percent:+.0f} % ({each_us:+.1f} µs each)")
        lines.append(f"| {order} | {' | '.join(cells)} | {' | '.join(over)} |")
    return lines


def measure_reads(
    dsn: str, notifications: int, recipients: int, heavy: int, calls: int, repeats: int
) -> dict[str, Any]:
    print(f"loading {notifications:,} notifications ...", flush=True)
    load_seconds = load(dsn, notifications, recipients, heavy)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), pool_size=1
    ).execution_options(schema_translate_map={None: SCHEMA})
    states: dict[str, Any] = {}
    try:
        with Session(engine) as session:
            change_cursor = inbox.changes_cursor(session)
        ops = operations(change_cursor, "user:heavy")
        print("measuring with no statistics ...", flush=True)
        states["no statistics"] = measure_state(dsn, engine, ops, recipients, calls, repeats)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in TABLES:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, table)))
        print("measuring after ANALYZE ...", flush=True)
        states["analyzed"] = measure_state(dsn, engine, ops, recipients, calls, repeats)
    finally:
        engine.dispose()
        drop(dsn, SCHEMA)
    return {"load_seconds": load_seconds, "states": states}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inbox")
    parser.add_argument("--full", action="store_true", help="1,000,000 notifications (else 200,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, help="calls per operation per repeat (300 quick, 1,000 full)")
    parser.add_argument("--fanout-repeats", type=int, help="repeats of the fan-out insert (3 quick, 7 full)")
    parser.add_argument(
        "--part", choices=("all", "reads", "fanout"), default="all", help="results are saved only for all"
    )
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    notifications, recipients, heavy = (1_000_000, 10_000, 20_000) if args.full else (200_000, 2_000, 4_000)
    calls = args.calls or (1_000 if args.full else 300)
    dsn = find_database().dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    result: dict[str, Any] = {
        "mode": mode,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "notifications": notifications,
        "recipients": recipients,
        "heavy": heavy,
        "calls": calls,
        "repeats": args.repeats,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "postgresql": version,
    }
    if args.part in ("all", "reads"):
        result.update(measure_reads(dsn, notifications, recipients, heavy, calls, args.repeats))
    if args.part in ("all", "fanout"):
        print(f"measuring a {FANOUT_ROWS:,}-notification insert ...", flush=True)
        result["fanout_repeats"] = args.fanout_repeats or (7 if args.full else 3)
        result["fanout_seconds"] = fanout_cost(dsn, result["fanout_repeats"])
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    markdown = report(result)
    print(markdown)
    if args.part == "all":
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for name in (f"inbox-{stamp}-{mode}", f"inbox-latest-{mode}"):
            (RESULTS / f"{name}.md").write_text(markdown)
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
