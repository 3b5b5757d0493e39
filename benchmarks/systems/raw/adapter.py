"""The ceiling: a bare psycopg ``FOR UPDATE SKIP LOCKED`` loop with no queue library around it.

One table, a partial index on available jobs, and a statement-level trigger that NOTIFYs on insert.
Each worker thread owns one connection and repeats: claim up to B jobs (one ``UPDATE … FROM
(SELECT … FOR UPDATE SKIP LOCKED) RETURNING``), perform them, acknowledge them (one ``UPDATE …
WHERE id = ANY``): two transactions per batch. When nothing is available it waits for a
notification (LISTEN) or 0.2 s. Enqueue: one ``INSERT`` per transaction, a bulk ``INSERT …
SELECT unnest(…)``, or ``COPY``.
"""

from __future__ import annotations

import json
import threading
from importlib.metadata import version

import benchkit
import psycopg
from psycopg.types.json import Jsonb

RECORDER = benchkit.Recorder()
CHANNEL = "raw_jobs"
IDLE_WAIT_S = 0.2

SCHEMA = """
CREATE TABLE raw_jobs (
    id bigserial PRIMARY KEY,
    state text NOT NULL DEFAULT 'available',
    args jsonb NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
CREATE INDEX raw_jobs_available ON raw_jobs (id) WHERE state = 'available';
CREATE FUNCTION raw_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('raw_jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER raw_jobs_notify AFTER INSERT ON raw_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raw_jobs_notify();
"""

CLAIM = """
UPDATE raw_jobs AS j SET state = 'running'
FROM (
    SELECT id FROM raw_jobs WHERE state = 'available' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
) AS picked
WHERE j.id = picked.id
RETURNING j.id, j.args
"""
ACK = "UPDATE raw_jobs SET state = 'completed', completed_at = now() WHERE id = ANY(%s)"
INSERT_ONE = "INSERT INTO raw_jobs (args) VALUES (%s)"
INSERT_UNNEST = "INSERT INTO raw_jobs (args) SELECT unnest(%s::jsonb[])"

VARIANTS = {f"batch{batch}-conn{conns}": (batch, conns) for batch in (1, 100) for conns in (1, 4)}


def info(_: benchkit.Task) -> benchkit.Result:
    return benchkit.info(
        system="raw",
        version=f"psycopg {version('psycopg')}",
        enqueue_modes=[
            {"name": "single", "bulk": False, "description": "INSERT … VALUES: one job, one transaction"},
            {"name": "unnest", "bulk": True, "description": "INSERT … SELECT unnest(%s::jsonb[])"},
            {"name": "copy", "bulk": True, "description": "COPY raw_jobs (args) FROM STDIN"},
        ],
        variants=[
            {
                "name": name,
                "scales": False,
                "settings": f"claim+ack batch {batch} on {conns} connection(s), one thread each",
            }
            for name, (batch, conns) in VARIANTS.items()
        ],
        latency_variant="batch1-conn1",
        done_sql="SELECT count(*) FROM raw_jobs WHERE state = 'completed'",
        total_sql="SELECT count(*) FROM raw_jobs",
        notes=["no retries, no heartbeats, no bookkeeping: the floor of work a SKIP LOCKED queue does"],
    )


def insert_unnest(conn: psycopg.Connection, seqs: list[int]) -> None:
    conn.execute(INSERT_UNNEST, ([Jsonb({"seq": seq}) for seq in seqs],))


def insert_copy(conn: psycopg.Connection, seqs: list[int]) -> None:
    with conn.cursor().copy("COPY raw_jobs (args) FROM STDIN") as copy:
        for seq in seqs:
            copy.write_row((json.dumps({"seq": seq}),))


def setup(task: benchkit.Task) -> benchkit.Result:
    with psycopg.connect(task["dsn"], autocommit=True) as conn:
        conn.execute(SCHEMA)
        preload = task.get("preload")
        if preload:
            insert_copy(conn, list(range(int(preload["count"]))))
    return {}


def enqueue(task: benchkit.Task) -> benchkit.Result:
    with psycopg.connect(task["dsn"], autocommit=True) as conn:

        def single(seq: int) -> None:
            conn.execute(INSERT_ONE, (Jsonb({"seq": seq}),))

        def unnest(seqs: list[int]) -> None:
            insert_unnest(conn, seqs)

        def copy(seqs: list[int]) -> None:
            insert_copy(conn, seqs)

        return benchkit.enqueue_sync(task, single, {"unnest": unnest, "copy": copy})


def worker_loop(dsn: str, batch: int, stop: threading.Event, failures: list[BaseException]) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            while not stop.is_set():
                rows = conn.execute(CLAIM, (batch,)).fetchall()
                if not rows:
                    for _ in conn.notifies(timeout=IDLE_WAIT_S, stop_after=1):
                        pass
                    continue
                for _, args in rows:
                    RECORDER.record(int(args["seq"]))
                conn.execute(ACK, ([job_id for job_id, _ in rows],))
    except BaseException as exc:
        failures.append(exc)
        raise


def work(task: benchkit.Task) -> benchkit.Result:
    batch, conns = VARIANTS[task["variant"]]
    stop = threading.Event()
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=worker_loop, args=(task["dsn"], batch, stop, failures), name=f"raw-{i}")
        for i in range(conns)
    ]
    for thread in threads:
        thread.start()
    benchkit.ready()
    benchkit.wait_for_stop_line()
    stop.set()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"a worker thread failed: {failures[0]!r}")
    return RECORDER.result(bool(task.get("record_starts")))


if __name__ == "__main__":
    raise SystemExit(benchkit.main({"info": info, "setup": setup, "enqueue": enqueue, "work": work}))
