"""Running behind a connection pooler: PgBouncer, pgcat, Supavisor, Odyssey and the like.

A pooler in **transaction mode** hands each transaction of a client the first free server
connection, so nothing that lives in a server session survives from one transaction to the next:

* server-side prepared statements (psycopg prepares a statement it has run five times; PgBouncer
  before 1.21 doesn't track them, and the next transaction may find "prepared statement does not
  exist"): a pooled connection of pgqueue's never prepares;
* ``SET`` without ``LOCAL``: pgqueue's statements only change settings for their own transaction;
* ``LISTEN``: the listening session is gone once its transaction ends, and nothing is heard. Give
  the runtime a second connection string that reaches PostgreSQL directly (``direct_conninfo``,
  ``--direct-dsn``): the notifier listens there, and session-bound maintenance (``REINDEX
  CONCURRENTLY`` with its ``statement_timeout``) runs there. Without one, nodes still work: the
  notifier's self-test finds that LISTEN hears nothing and every producer polls.

A pooler is recognised without asking it (PgBouncer's ``SHOW`` commands are on its own admin
database): it answers the connection with a cancel key of its own, so the backend pid the client
was told differs from the server's ``pg_backend_pid()``. Its mode is told by two connections: a
transaction of the second one lands on the server session the first one just released, or either
one's statements run on different server sessions, only when the pooler is not in session
mode. A busy pool may hand the released session to another client first, so the probe is made a
few times before it calls the pooler a session pooler (which it never mistakes for the other).
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import psycopg

__all__ = ["PoolMode", "aconfigure", "apool_mode", "apooled", "awarn_about", "configure", "pooled"]

_log = logging.getLogger("pgqueue.pooler")

_BACKEND_PID = "SELECT pg_backend_pid()"
#: probes of a pooler's mode before it is taken for a session pooler
_MODE_PROBES = 20


class PoolMode(enum.Enum):
    """How a connection string reaches PostgreSQL."""

    DIRECT = "direct"
    #: each transaction may run on another server session (PgBouncer's transaction or statement mode)
    TRANSACTION = "transaction"
    #: a pooler that gives each client a server session of its own for as long as it is connected
    SESSION = "session"


def pooled(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` goes through a pooler (one round trip; closes the transaction it opens)."""
    row = conn.execute(_BACKEND_PID).fetchone()
    if not conn.autocommit:
        conn.rollback()
    return row is not None and row[0] != conn.info.backend_pid


async def apooled(conn: psycopg.AsyncConnection[Any]) -> bool:
    """:func:`pooled` for an async connection."""
    row = await (await conn.execute(_BACKEND_PID)).fetchone()
    if not conn.autocommit:
        await conn.rollback()
    return row is not None and row[0] != conn.info.backend_pid


def configure(conn: psycopg.Connection[Any]) -> bool:
    """Make ``conn`` safe behind a transaction pooler: no server-side prepared statements.

    Returns whether it is pooled. Use it as a connection pool's ``configure`` step, or right after
    connecting (SQLAlchemy: a ``connect`` event on the engine).
    """
    if pooled(conn):
        conn.prepare_threshold = None
        return True
    return False


async def aconfigure(conn: psycopg.AsyncConnection[Any]) -> bool:
    """:func:`configure` for an async connection."""
    if await apooled(conn):
        conn.prepare_threshold = None
        return True
    return False


async def apool_mode(conninfo: str, **connect_options: Any) -> PoolMode:
    """How ``conninfo`` reaches PostgreSQL: directly, or through a pooler in which mode.

    Opens one connection when the answer is :attr:`PoolMode.DIRECT`, two otherwise.
    """
    options = {"autocommit": True, **connect_options}
    async with await psycopg.AsyncConnection.connect(conninfo, **options) as first:
        if not await apooled(first):
            return PoolMode.DIRECT
        async with await psycopg.AsyncConnection.connect(conninfo, **options) as second:
            firsts: set[int] = set()
            seconds: set[int] = set()
            for _ in range(_MODE_PROBES):
                released = await _server_pid(first)
                async with second.transaction():
                    taken = await _server_pid(second)
                firsts.add(released)
                seconds.add(taken)
                # A session pooler gives each client one server session for as long as it is
                # connected: it never lends `first`'s to `second`, nor moves either to another one.
                if taken == released or len(firsts) > 1 or len(seconds) > 1:
                    return PoolMode.TRANSACTION
            return PoolMode.SESSION


async def _server_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute(_BACKEND_PID)).fetchone()
    assert row is not None
    return int(row[0])


async def awarn_about(conninfo: str, direct_conninfo: str | None, *, pooled: bool = True) -> PoolMode:
    """Check how a node's connection strings reach PostgreSQL; log what would go wrong.

    Returns the mode of ``conninfo`` (``pooled=False``: already known to be direct, not asked
    again). Warns when it is a session pooler (it saves nothing: every pooled connection keeps a
    server session), when LISTEN would go through a transaction pooler (nothing heard: nodes
    poll), and when ``direct_conninfo`` is itself pooled.
    """
    mode = await apool_mode(conninfo) if pooled else PoolMode.DIRECT
    if mode is PoolMode.SESSION:
        _log.warning(
            "pgqueue: the database connection goes through a pooler in session mode, which keeps a "
            "server connection for each of this node's connections and saves nothing; use transaction "
            "mode (and direct_conninfo / --direct-dsn for LISTEN), or connect directly"
        )
    if direct_conninfo is not None:
        if await apool_mode(direct_conninfo) is not PoolMode.DIRECT:
            _log.warning(
                "pgqueue: direct_conninfo / --direct-dsn goes through a pooler too; LISTEN may hear "
                "nothing (nodes then poll) and REINDEX loses its statement_timeout: point it at "
                "PostgreSQL itself"
            )
    elif mode is PoolMode.TRANSACTION:
        _log.warning(
            "pgqueue: the database connection goes through a pooler in transaction mode, where LISTEN "
            "hears nothing: pass direct_conninfo (--direct-dsn, chimeway's direct_database_url) "
            "reaching PostgreSQL directly; until then this node polls for new jobs and signals"
        )
    return mode
