"""``make demo``: a real end-to-end run on whatever database :mod:`pgqueue.localdb` finds."""

from __future__ import annotations

import json
import sys

import psycopg
from psycopg import sql

from pgqueue.localdb import find_database
from pgqueue.migrate import migrate

SCHEMA = "pgqueue_demo"


def main() -> int:
    found = find_database()
    with psycopg.connect(found.dsn) as conn:
        result = migrate(conn, SCHEMA)
        print(f"schema {SCHEMA!r} at version {result.version}")
        with conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO {} (worker, args) VALUES (%s, %s) "
                    "RETURNING id, state, queue, worker, args, inserted_at"
                ).format(sql.Identifier(SCHEMA, "jobs")),
                ("demo.Hello", json.dumps({"greeting": "hello"})),
            ).fetchone()
        print(f"enqueued inside a transaction and committed: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
