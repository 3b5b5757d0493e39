"""The database side of the scenarios: the server they run on, their schemas, and a reader.

By default the suite runs on a private embedded PostgreSQL (``pgqueue.localdb.start_embedded``):
its connection budget, autovacuum and restarts are the suite's own, whatever else the machine runs.
It is configured as shipped but for two settings: ``max_connections`` 300 and
``autovacuum_naptime`` 10 s (see :data:`AUTOVACUUM_NAPTIME`).
``--dsn`` runs the scenarios on an existing server instead, each in a schema of its own that is
dropped afterwards; the restart scenario then still starts a private server, because it is the
only kind the suite may restart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

import pgqueue
from pgqueue import migrate as migrations
from pgqueue.localdb import EmbeddedServer, start_embedded

from .workers import EXECUTIONS_DDL

__all__ = ["Probe", "Server", "insert_jobs", "open_server", "with_application_name"]

#: Three storm nodes, their replacements' leftovers and the suite's own readers fit with room.
PRIVATE_MAX_CONNECTIONS = 300
#: Autovacuum looks at each database this often (PostgreSQL's default is a minute): a one-minute
#: soak then sees vacuum keep up with the jobs table, as a long run sees it with the default.
AUTOVACUUM_NAPTIME = "10s"


@dataclass
class Server:
    """Where scenarios run: a DSN, and the embedded server behind it when it is the suite's own."""

    dsn: str
    embedded: EmbeddedServer | None = None
    schemas: list[str] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return self.embedded is not None

    @property
    def description(self) -> str:
        return "private embedded PostgreSQL" if self.private else "the server given with --dsn"

    def version(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: only ever on the suite's own server."""
        if self.embedded is None:
            raise RuntimeError("refusing to restart a server the chaos suite did not start")
        self.embedded.pg_ctl("restart", "-m", "fast")

    def new_schema(self, prefix: str, *, chimeway: bool = False, name: str | None = None) -> str:
        """A fresh schema with pgqueue (and Chimeway) migrated and an ``executions`` table."""
        schema = name or f"chaos_{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.dsn) as conn:
            migrations.migrate(conn, schema)
            if chimeway:
                from chimeway.migrations import CHIMEWAY

                migrations.migrate(conn, schema, CHIMEWAY)
            conn.execute(EXECUTIONS_DDL.format(sql.Identifier(schema)))
        self.schemas.append(schema)
        return schema

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            return
        for schema in self.schemas:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute("SET lock_timeout = '5s'")
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            except psycopg.Error:
                pass  # left behind; its name starts with chaos_


def open_server(dsn: str | None) -> Server:
    """The server named by ``dsn``, or a new private embedded one (with a larger connection budget)."""
    if dsn:
        return Server(dsn)
    embedded = start_embedded()
    with psycopg.connect(embedded.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(PRIVATE_MAX_CONNECTIONS))
        conn.execute(sql.SQL("ALTER SYSTEM SET autovacuum_naptime = {}").format(AUTOVACUUM_NAPTIME))
    embedded.pg_ctl("restart", "-m", "fast")
    return Server(embedded.dsn, embedded)


@contextmanager
def private_server() -> Iterator[Server]:
    """A private embedded server for one scenario, stopped afterwards."""
    server = open_server(None)
    try:
        yield server
    finally:
        server.close()


def with_application_name(dsn: str, name: str) -> str:
    """``dsn`` with every connection made from it tagged ``name`` (to find, or terminate, them)."""
    return psycopg.conninfo.make_conninfo(dsn, application_name=name)


def insert_jobs(dsn: str, schema: str, jobs: Sequence[pgqueue.NewJob], batch: int = 5_000) -> list[int]:
    """Insert ``jobs`` in a few transactions; their ids, in order."""
    ids: list[int] = []
    with psycopg.connect(dsn) as conn:
        for start in range(0, len(jobs), batch):
            ids += [
                job.id for job in pgqueue.insert_all(conn, list(jobs[start : start + batch]), schema=schema)
            ]
            conn.commit()
    return ids


class Probe:
    """Reads a scenario's schema on its own autocommit connection, reconnecting through outages.

    In every query ``{s}`` stands for the schema (quoted as an identifier).
    """

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] = (), *, timeout: float = 60.0
    ) -> list[Any]:
        statement = sql.SQL(query).format(s=sql.Identifier(self.schema))
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                return self._conn.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def value(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.rows(query, params)[0][0]

    def states(self) -> dict[str, int]:
        return {state: int(count) for state, count in self.rows(
            "SELECT state::text, count(*) FROM {s}.jobs GROUP BY state"
        )}  # fmt: skip

    def count(self, state: str) -> int:
        return int(
            self.value("SELECT count(*) FROM {s}.jobs WHERE state = %s::text::{s}.job_state", (state,))
        )

    def executions(self) -> int:
        return int(self.value("SELECT count(*) FROM {s}.executions"))

    def has_executed(self, count: int) -> bool:
        return self.executions() >= count

    def has_producer(self, node: str) -> bool:
        return bool(self.value("SELECT count(*) > 0 FROM {s}.pgqueue_producers WHERE node = %s", (node,)))

    def executing_on(self, node: str) -> dict[int, Any]:
        """The jobs executing on ``node`` now: id → args."""
        rows = self.rows(
            "SELECT id, args FROM {s}.jobs WHERE state = 'executing' AND attempted_by[1] = %s", (node,)
        )
        return {int(job_id): args for job_id, args in rows}

    def executions_by_job(self) -> dict[int, list[tuple[int, str, int]]]:
        """job id → its executions as (attempt, node, pid), in the order they were recorded."""
        found: dict[int, list[tuple[int, str, int]]] = {}
        for job_id, attempt, node, pid in self.rows(
            "SELECT job_id, attempt, node, pid FROM {s}.executions ORDER BY at, attempt"
        ):
            found.setdefault(int(job_id), []).append((int(attempt), str(node), int(pid)))
        return found

    def leader(self) -> str | None:
        rows = self.rows("SELECT node FROM {s}.pgqueue_leaders WHERE expires_at > now()")
        return str(rows[0][0]) if rows else None
