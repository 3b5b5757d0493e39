"""The processes and floors W4 measures Chimeway against, each runnable on its own.

* ``python -m benchmarks.chimeway_parts receiver --port N``: a webhook receiver in its own process
  (asyncio, keep-alive HTTP/1.1) that answers every POST ``200 {"id": …}``.
* ``python -m benchmarks.chimeway_parts worker -- <chimeway.worker args>``: ``python -m
  chimeway.worker`` itself, counting every statement its connections send (written to the file
  named by ``$CHIMEWAY_BENCH_COUNTS`` as it exits); nothing else is changed.
* ``python -m benchmarks.chimeway_parts drain --dsn D --schema S --concurrency C``: pgqueue's
  no-op drain (W2's work) on the same event loop implementation as the worker (plain asyncio).
* :func:`raw_floor`: Chimeway's delivery work in raw psycopg, the floor W4 is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

import pgqueue
from pgqueue.migrate import migrate
from pgqueue.runtime import Runtime

__all__ = ["Noop", "prepare_drain", "raw_floor"]

# -- the receiver ----------------------------------------------------------------------------------


class _Receiver(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests with Content-Length bodies; answers each at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.served = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.served += 1
            body = b'{"id":"msg-%d"}' % self.served
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Receiver, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


# -- the counted worker ----------------------------------------------------------------------------


def _counted_worker(argv: Sequence[str]) -> int:
    counts = {"statements": 0}
    target = os.environ.get("CHIMEWAY_BENCH_COUNTS")
    for cls in (psycopg.AsyncCursor, psycopg.Cursor):
        _count_calls(cls, counts)
    if target:
        atexit.register(lambda: open(target, "w").write(json.dumps(counts)))  # noqa: SIM115
    from chimeway.worker import main

    return main(list(argv))


def _count_calls(cls: Any, counts: dict[str, int]) -> None:
    execute, executemany = cls.execute, cls.executemany
    if asyncio.iscoroutinefunction(execute):

        async def aexecute(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts["statements"] += 1
            return await execute(self, *args, **kwargs)

        async def aexecutemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
            params = list(params_seq)
            counts["statements"] += len(params)
            return await executemany(self, query, params, **kwargs)

        cls.execute, cls.executemany = aexecute, aexecutemany
        return

    def sexecute(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["statements"] += 1
        return execute(self, *args, **kwargs)

    cls.execute = sexecute


# -- W2: pgqueue's no-op drain ---------------------------------------------------------------------


class Noop(pgqueue.Worker, queue="bench_noop", name="bench.ChimewayNoop"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


def _drain(dsn: str, schema: str, concurrency: int) -> int:
    Runtime(dsn, queues={"bench_noop": concurrency}, schema=schema, shutdown_grace_period=5).run()
    return 0


def prepare_drain(dsn: str, schema: str, count: int) -> None:
    """A fresh ``schema`` with ``count`` no-op jobs waiting (for ``drain``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema)
        for start in range(0, count, 50_000):
            jobs = [Noop.new({"seq": n}) for n in range(start, min(count, start + 50_000))]
            pgqueue.insert_all(conn, jobs, schema=schema, notify=False)
        conn.commit()


# -- the raw floor ---------------------------------------------------------------------------------

_FLOOR_CLAIM = """
WITH claimed AS (
    SELECT id FROM {jobs}
    WHERE state = 'available' AND queue = 'chimeway_delivery'
    ORDER BY priority, scheduled_at, id
    LIMIT %(size)s
    FOR UPDATE SKIP LOCKED
),
started AS (
    UPDATE {jobs} AS j
    SET state = 'executing', attempt = j.attempt + 1, attempted_at = now(),
        attempted_by = ARRAY['floor', 'floor']
    FROM claimed
    WHERE j.id = claimed.id
    RETURNING j.id, (j.args ->> 'delivery_id')::uuid AS delivery_id
),
dispatched AS (
    UPDATE {deliveries} AS d
    SET status = 'dispatched', updated_at = now()
    FROM started AS s
    WHERE d.id = s.delivery_id AND d.status IN ('pending', 'failed')
    RETURNING d.id, d.notification_id, d.channel
)
-- OFFSET 0 keeps each lookup a primary-key probe per claimed row: joined plainly, the planner
-- (which can't know the CTE holds 100 rows) hashes the whole notifications table instead.
SELECT s.id, d.id, d.channel, n.recipient_identity, n.metadata, e.notification_key,
       (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = d.id)
FROM started AS s
JOIN dispatched AS d ON d.id = s.delivery_id
CROSS JOIN LATERAL (
    SELECT x.recipient_identity, x.metadata::text AS metadata, x.event_id
    FROM {notifications} AS x WHERE x.id = d.notification_id OFFSET 0
) AS n
CROSS JOIN LATERAL (
    SELECT y.notification_key FROM {events} AS y WHERE y.id = n.event_id OFFSET 0
) AS e
"""

_FLOOR_RECORD = """
WITH items AS (
    SELECT * FROM unnest(%(jobs)s::bigint[], %(deliveries)s::uuid[], %(numbers)s::int[])
        AS t(job_id, delivery_id, attempt_number)
),
attempts AS (
    INSERT INTO {attempts} (delivery_id, attempt_number, outcome, provider_response, adapter)
    SELECT delivery_id, attempt_number, 'succeeded', '{{"adapter": "raw"}}', 'raw' FROM items
),
succeeded AS (
    UPDATE {deliveries} AS d SET status = 'succeeded', updated_at = now()
    FROM items AS i WHERE d.id = i.delivery_id AND d.status = 'dispatched'
),
completed AS (
    UPDATE {jobs} AS j SET state = 'completed', completed_at = now()
    FROM items AS i WHERE j.id = i.job_id AND j.state = 'executing'
)
SELECT count(*) FROM items
"""


def raw_floor(dsn: str, schema: str, count: int, batch: int = 100) -> dict[str, float]:
    """Deliver ``count`` prepared deliveries in raw psycopg: per batch of ``batch``, one transaction
    claims the jobs and marks the deliveries dispatched (connection 1), then one inserts the attempts,
    marks them succeeded and completes the jobs (connection 2), the two connections working on
    consecutive batches at once. Commits as the worker's do (without waiting for the WAL flush)."""

    def render(text: str) -> str:
        names = {
            "jobs": sql.Identifier(schema, "jobs"),
            "deliveries": sql.Identifier(schema, "chimeway_deliveries"),
            "attempts": sql.Identifier(schema, "chimeway_delivery_attempts"),
            "notifications": sql.Identifier(schema, "chimeway_notifications"),
            "events": sql.Identifier(schema, "chimeway_events"),
        }
        return sql.SQL(text).format(**names).as_string(None)

    claim, record = render(_FLOOR_CLAIM), render(_FLOOR_RECORD)
    handoff: queue.Queue[list[tuple[Any, ...]] | None] = queue.Queue(maxsize=2)
    done = [0]

    def claimer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            while True:
                rows = conn.execute(claim, {"size": batch}).fetchall()
                if not rows:
                    handoff.put(None)
                    return
                handoff.put(rows)

    def recorder() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            while (rows := handoff.get()) is not None:
                for row in rows:
                    json.loads(row[4])  # what a dispatcher hands its adapter
                conn.execute(
                    record,
                    {
                        "jobs": [r[0] for r in rows],
                        "deliveries": [r[1] for r in rows],
                        "numbers": [int(r[6]) + 1 for r in rows],
                    },
                )
                done[0] += len(rows)

    started = time.perf_counter()
    threads = [threading.Thread(target=claimer), threading.Thread(target=recorder)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"deliveries": done[0], "seconds": seconds, "per_second": done[0] / seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chimeway_parts")
    sub = parser.add_subparsers(dest="part", required=True)
    receiver = sub.add_parser("receiver")
    receiver.add_argument("--port", type=int, required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("rest", nargs=argparse.REMAINDER)
    drain = sub.add_parser("drain")
    drain.add_argument("--dsn", required=True)
    drain.add_argument("--schema", required=True)
    drain.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args(argv)
    if args.part == "receiver":
        asyncio.run(_serve(args.port))
        return 0
    if args.part == "worker":
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return _counted_worker(rest)
    return _drain(args.dsn, args.schema, args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
