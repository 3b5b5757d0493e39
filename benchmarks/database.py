"""The PostgreSQL server the benchmarks run on: per-measurement databases and their counters."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from benchmarks.environments import REPO_DIR

SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "autovacuum", "max_connections", "wal_level")


def find_database_function() -> Callable[..., Any]:
    """``pgqueue.localdb.find_database``, also where pgqueue's own dependencies are not installed.

    ``localdb`` needs only psycopg, but importing it through the package imports all of pgqueue;
    the runner environment (``benchmarks/.envs/runner``) has psycopg only, so there the file is
    loaded on its own.
    """
    try:
        from pgqueue.localdb import find_database
    except ImportError:
        path = REPO_DIR / "queue" / "pgqueue" / "localdb.py"
        spec = importlib.util.spec_from_file_location("_bench_pgqueue_localdb", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module.find_database  # type: ignore[no-any-return]
    return find_database


def to_uri(params: dict[str, str]) -> str:
    """A libpq URI for ``params``: every driver here (psycopg, asyncpg) accepts this form."""
    rest = dict(params)
    user = rest.pop("user", "")
    password = rest.pop("password", "")
    host = rest.pop("host", "")
    port = rest.pop("port", "")
    dbname = rest.pop("dbname", "")
    auth = ""
    if user:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    if host and not host.startswith("/") and "," not in host:
        netloc = auth + (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    else:
        netloc = auth
        if host:
            rest["host"] = host
        if port:
            rest["port"] = port
    query = urlencode(rest)
    return f"postgresql://{netloc}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")


@dataclass
class Poller:
    """A connection to one benchmark database that counts the transactions it causes.

    Its own transactions land in the same ``pg_stat_database`` row as the system's, so the runner
    subtracts them: one for the connection's start-up plus one per autocommit statement.
    """

    conn: psycopg.Connection[tuple[int]]
    transactions: int = 1

    def count(self, query: str) -> int:
        self.transactions += 1
        row = self.conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


@dataclass
class Server:
    """Administrative access through the maintenance database that ``find_database`` gave us."""

    dsn: str
    created: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._admin: psycopg.Connection[tuple[object, ...]] = psycopg.connect(self.dsn, autocommit=True)

    def dsn_for(self, dbname: str) -> str:
        params = {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None}
        params["dbname"] = dbname
        return to_uri(params)

    def version(self) -> str:
        row = self._admin.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def settings(self) -> dict[str, str]:
        rows = self._admin.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),)
        ).fetchall()
        return {str(name): str(value) for name, value in rows}

    def create(self, name: str, template: str | None = None) -> str:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self._admin.execute(query)
        self.created.add(name)
        return self.dsn_for(name)

    def drop(self, name: str) -> None:
        self._admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.discard(name)

    def drop_all(self) -> None:
        for name in sorted(self.created):
            self.drop(name)

    def wait_idle(self, name: str, timeout_s: float = 10.0) -> bool:
        """Wait until no client is connected to ``name``: its counters are flushed at disconnect."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self._admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND backend_type = 'client backend'",
                (name,),
            ).fetchone()
            if row is not None and int(str(row[0])) == 0:
                # A backend leaves pg_stat_activity while exiting; give its stats flush a moment.
                time.sleep(0.05)
                return True
            time.sleep(0.02)
        return False

    def transactions(self, name: str) -> int:
        """``xact_commit + xact_rollback`` of ``name`` as the statistics system has it now."""
        self._admin.execute("SELECT pg_stat_clear_snapshot()")
        row = self._admin.execute(
            "SELECT coalesce(xact_commit + xact_rollback, 0) FROM pg_stat_database WHERE datname = %s",
            (name,),
        ).fetchone()
        return int(str(row[0])) if row else 0

    @contextmanager
    def poller(self, name: str) -> Iterator[Poller]:
        poller = Poller(psycopg.connect(self.dsn_for(name), autocommit=True))
        try:
            yield poller
        finally:
            poller.close()

    def close(self) -> None:
        self._admin.close()
