"""A node's connections: its name, its connection pool, and the checks made when it starts.

The runtime's pool opens every connection in autocommit (a statement outside a transaction is
one round trip, not three), decodes JSON with orjson (job args and meta are decoded on every
fetch), and never prepares statements behind a transaction pooler (see :mod:`pgqueue.pooler`).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from . import migrate, pooler
from .errors import ConfigError

__all__ = ["acheck_connections", "default_node_name", "node_name", "node_pool"]


def default_node_name() -> str:
    """``host:pid``: unique per process, so two processes never share heartbeats or leadership."""
    return f"{socket.gethostname()}:{os.getpid()}"


def node_name(node: str | None) -> str:
    """``node`` checked, or :func:`default_node_name` when it is None."""
    if node is None:
        return default_node_name()
    if not isinstance(node, str) or not node or "\x00" in node or len(node) > 255:
        raise ConfigError(f"node must be a non-empty string of at most 255 characters, got {node!r}")
    return node


def node_pool(
    conninfo: str | None, pool: AsyncConnectionPool[Any] | None, node: str, size: int
) -> tuple[AsyncConnectionPool[Any], str]:
    """The pool a node runs on (``pool`` when given, else one of ``size`` connections to
    ``conninfo``, not opened yet) and the connection string it reaches the database with."""
    if pool is None and not conninfo:
        raise ConfigError("Runtime needs a conninfo (DSN) or a psycopg_pool.AsyncConnectionPool")
    pool = pool or AsyncConnectionPool(
        conninfo or "",
        min_size=min(2, size),
        max_size=size,
        open=False,
        name=f"pgqueue-{node}",
        configure=configure_connection,
    )
    pool_conninfo = pool.conninfo
    if not conninfo and not isinstance(pool_conninfo, str):
        raise ConfigError("pass conninfo as well when the pool's conninfo is a callable")
    return pool, conninfo or str(pool_conninfo)


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """What every connection of a node's own pool is set up with (see the module docstring)."""
    set_json_loads(orjson.loads, conn)
    await conn.set_autocommit(True)
    await pooler.aconfigure(conn)


async def acheck_connections(
    pool: AsyncConnectionPool[Any],
    schema: str,
    conninfo: str,
    direct_conninfo: str | None,
    *,
    verify_schema: bool,
) -> pooler.PoolMode:
    """At a node's start: the schema is migrated (when ``verify_schema``), and how ``conninfo``
    and ``direct_conninfo`` reach PostgreSQL, with a warning for what would go wrong."""
    async with pool.connection() as conn:
        if verify_schema:
            await migrate.averify_migrated(conn, schema)
        behind_pooler = await pooler.apooled(conn)
    if behind_pooler or direct_conninfo is not None:
        return await pooler.awarn_about(conninfo, direct_conninfo, pooled=behind_pooler)
    return pooler.PoolMode.DIRECT
