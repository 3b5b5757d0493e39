"""The queue's wheel on its own: run by ``make wheel-demo`` in a virtualenv holding only
``chimeway-pgqueue`` (no chimeway, no SQLAlchemy), outside the source tree.

Migrates a fresh schema, inserts a job, drains the queue through the real executor, checks the
job completed, and drops the schema.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid

import psycopg
from psycopg import sql

import pgqueue
from pgqueue.localdb import find_database
from pgqueue.migrate import migrate
from pgqueue.testing import drain_queue

seen: list[int] = []


class Record(pgqueue.Worker, queue="smoke"):
    def perform(self, job: pgqueue.Job) -> None:
        seen.append(job.args["n"])


def main() -> int | str:
    for absent in ("chimeway", "sqlalchemy"):
        if importlib.util.find_spec(absent) is not None:
            return f"{absent} is installed: this check wants the queue's wheel alone"
    if "site-packages" not in (pgqueue.__file__ or ""):
        return f"pgqueue comes from {pgqueue.__file__}, not from the installed wheel"
    dsn = find_database().dsn
    schema = f"smoke_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(dsn) as conn:
            migrate(conn, schema)
            job = pgqueue.insert(conn, Record.new({"n": 7}), schema=schema)
        result = drain_queue(dsn, "smoke", schema=schema)
        with psycopg.connect(dsn) as conn:
            stored = pgqueue.get_job(conn, job.id, schema=schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    if seen != [7] or result.success != 1 or stored is None or stored.state != "completed":
        return f"the job did not complete: ran {seen}, {result.as_dict()}, {stored}"
    print(f"chimeway-pgqueue alone: job {job.id} completed ({pgqueue.__file__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
