"""Adapter for pgqueue (this repository), driven by the benchmark runner.

As a user would run it: ``pgqueue.Runtime`` with one queue whose limit is the concurrency, the
default plugins (stager, lifeline), the default pool, an ``async def perform``, and uvloop (as the
peers that offer it use it). Two variants: ``default`` (claims and acks commit without waiting for
the WAL flush, so a database crash may re-run a job but never loses one) and ``durable``
(``synchronous_acks=True``: every claim and ack waits for its flush, as a peer's ``durable`` mode).
Enqueue: ``pgqueue.insert`` per transaction, and ``insert_all`` (COPY for a batch of 200 or more
jobs with no unique job among them).
"""

from __future__ import annotations

from importlib.metadata import version

import anyio
import benchkit
import psycopg

import pgqueue
from pgqueue.migrate import migrate
from pgqueue.runtime import Runtime

RECORDER = benchkit.Recorder()
QUEUE = "bench"
_CHUNK = 50_000


class Noop(pgqueue.Worker, queue=QUEUE, name="bench.Noop"):
    async def perform(self, job: pgqueue.Job) -> None:
        RECORDER.record(job.args["seq"])


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="pgqueue",
        version=version("chimeway"),
        enqueue_modes=[
            {
                "name": "single",
                "bulk": False,
                "description": "pgqueue.insert(conn, job), autocommit",
            },
            {
                "name": "bulk",
                "bulk": True,
                "description": "pgqueue.insert_all(conn, jobs): ids reserved, then COPY",
            },
        ],
        variants=[
            {
                "name": "default",
                "scales": True,
                "settings": "Runtime(queues={'bench': C}), default plugins and pool, async perform, uvloop; "
                "claims and acks commit asynchronously (the default)",
            },
            {
                "name": "durable",
                "scales": True,
                "settings": "as default, with synchronous_acks=True: "
                "every claim and ack waits for its WAL flush",
            },
        ],
        latency_variant="default",
        done_sql="SELECT count(*) FROM jobs WHERE state = 'completed'",
        total_sql="SELECT count(*) FROM jobs",
        notes=["acks are written with the next fetch (one statement), or by the completer within 2 ms"],
    )


def setup(task: benchkit.Task) -> benchkit.Result:
    with psycopg.connect(task["dsn"]) as conn:
        migrate(conn, "public")
        preload = task.get("preload")
        if preload:
            count = int(preload["count"])
            for start in range(0, count, _CHUNK):
                jobs = [Noop.new({"seq": s}) for s in range(start, min(count, start + _CHUNK))]
                pgqueue.insert_all(conn, jobs, notify=False)
            conn.commit()
    return {}


def enqueue(task: benchkit.Task) -> benchkit.Result:
    # autocommit: each insert is its own transaction, one round trip (as the peers' one-job calls)
    with psycopg.connect(task["dsn"], autocommit=True) as conn:

        def single(seq: int) -> None:
            pgqueue.insert(conn, Noop.new({"seq": seq}))

        def bulk(seqs: list[int]) -> None:
            with conn.transaction():
                pgqueue.insert_all(conn, [Noop.new({"seq": s}) for s in seqs])

        return benchkit.enqueue_sync(task, single, {"bulk": bulk})


def work(task: benchkit.Task) -> benchkit.Result:
    concurrency = int(task.get("concurrency") or 10)

    durable = task.get("variant") == "durable"

    async def main() -> None:
        async with Runtime(task["dsn"], queues={QUEUE: concurrency}, synchronous_acks=durable):
            await benchkit.hold()

    anyio.run(main, backend_options={"use_uvloop": True})
    return RECORDER.result(bool(task.get("record_starts")))


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
