"""Where jobs are written: the caller's own connection, whatever library it comes from.

:func:`sync_writer` and :func:`async_writer` turn what the caller passed into a writer (see
:mod:`pgqueue.drivers`) on the connection underneath, so the job joins the very transaction the
application is in:

============================================ ==================================================
sync (``insert``, ``insert_all``, …)          async (``ainsert``, ``ainsert_all``, …)
============================================ ==================================================
psycopg ``Connection``/``Cursor``             psycopg ``AsyncConnection``/``AsyncCursor``
psycopg2 ``connection``/``cursor``            asyncpg ``Connection`` (also a pool's)
SQLAlchemy ``Session``/``Connection`` on      SQLAlchemy ``AsyncSession``/``AsyncConnection``
psycopg or psycopg2 (or, inside               on psycopg or asyncpg
``AsyncSession.run_sync``, psycopg or asyncpg)
SQLAlchemy ``Engine``: a transaction of its   asyncpg ``Pool``, SQLAlchemy ``AsyncEngine``: a
own, committed on return                      transaction of their own, committed on return
============================================ ==================================================

A connection in autocommit mode (psycopg's ``autocommit``, psycopg2's, asyncpg outside
``transaction()``) gets a transaction of its own for the call, so a batch lands whole or not at
all. Anything else is refused with a ``TypeError`` that lists the above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

from .drivers import (
    AsyncpgWriter,
    AsyncPsycopgWriter,
    AsyncWriter,
    Psycopg2Writer,
    PsycopgWriter,
    SyncWriter,
    is_asyncpg_connection,
    is_asyncpg_pool,
    psycopg2_connection,
)
from .store import queries_for

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import AdaptedConnection

__all__ = [
    "SyncExecutor",
    "async_connection",
    "async_driver_bridge",
    "async_writer",
    "sync_connection",
    "sync_executor",
    "sync_writer",
]

_SYNC_HINT = "a psycopg Connection or Cursor, or a SQLAlchemy Session or Connection"
_ASYNC_HINT = "a psycopg AsyncConnection or AsyncCursor, or a SQLAlchemy AsyncSession or AsyncConnection"


def _driver_error(dbapi: Any) -> TypeError:
    return TypeError(
        "pgqueue writes through psycopg 3: create the SQLAlchemy engine with the psycopg driver "
        f"(postgresql+psycopg://…); this one uses {type(dbapi).__module__}.{type(dbapi).__name__}"
    )


class SyncExecutor(Protocol):
    """Runs one statement in the caller's transaction and returns its rows as tuples."""

    def __call__(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...


def sync_executor(target: Any) -> SyncExecutor:
    """How to run statements in ``target``'s transaction from synchronous code.

    Usually straight on the psycopg connection underneath. One case needs SQLAlchemy itself: a
    sync ``Session`` handed out by ``AsyncSession.run_sync``, whose driver connection is async;
    SQLAlchemy's own ``exec_driver_sql`` bridges that.
    """
    sa_connection = _sqlalchemy_sync_connection(target)
    if sa_connection is not None:
        dbapi = sa_connection.connection.driver_connection
        if isinstance(dbapi, psycopg.AsyncConnection):

            def through_sqlalchemy(query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
                result = sa_connection.exec_driver_sql(query, dict(params))
                return [tuple(row) for row in result.fetchall()] if result.returns_rows else []

            return through_sqlalchemy
        if psycopg2_connection(dbapi) is not None:
            return Psycopg2Writer(dbapi).execute
        if is_asyncpg_connection(dbapi):
            if dbapi is not None and not dbapi.is_in_transaction():
                _join_sqlalchemy_transaction(sa_connection.exec_driver_sql)
            return _BridgedWriter(sa_connection.connection.dbapi_connection, AsyncpgWriter).execute
    legacy = psycopg2_connection(target)
    if legacy is not None:
        return Psycopg2Writer(legacy).execute
    conn = sync_connection(target)

    def direct(query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(query, params)
            # (`cur.description` would build a Column per field on every call, just to ask this.)
            result = cur.pgresult
            return cur.fetchall() if result is not None and result.status == pq.ExecStatus.TUPLES_OK else []

    return direct


def async_driver_bridge(target: Any) -> AdaptedConnection | None:
    """For a sync SQLAlchemy ``Session``/``Connection`` whose driver connection is async (one handed
    out by ``AsyncSession.run_sync``), SQLAlchemy's adapted connection; else None.

    Its ``run_async(fn)`` runs ``fn(psycopg AsyncConnection)`` to completion from synchronous
    code, in the caller's transaction: the way to use what only the driver offers (``COPY``)
    where ``exec_driver_sql`` is not enough.
    """
    sa_connection = _sqlalchemy_sync_connection(target)
    if sa_connection is None:
        return None
    if isinstance(sa_connection.connection.driver_connection, psycopg.AsyncConnection):
        return sa_connection.connection.dbapi_connection  # type: ignore[no-any-return]
    return None


_PSYCOPG_TYPES = (psycopg.Connection, psycopg.Cursor, psycopg.AsyncConnection, psycopg.AsyncCursor)


def _sqlalchemy_sync_connection(target: Any) -> Any:
    if isinstance(target, _PSYCOPG_TYPES):
        return None
    try:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover
        return None
    if isinstance(target, Session):
        target = target.connection()
    if isinstance(target, SAConnection):
        if not target.in_transaction():
            target.begin()
        return target
    return None


def sync_connection(target: Any) -> psycopg.Connection[Any]:
    """The psycopg connection (and so the transaction) behind ``target``."""
    if isinstance(target, psycopg.Connection):
        return target
    if isinstance(target, psycopg.Cursor):
        return target.connection
    if isinstance(target, psycopg.AsyncConnection | psycopg.AsyncCursor):
        raise TypeError("this is an async connection: use the async twin (ainsert, ainsert_all, …)")
    try:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency, but stay honest
        raise TypeError(f"expected {_SYNC_HINT}, got {type(target).__name__}") from None
    if isinstance(target, AsyncSession | SAAsyncConnection):
        raise TypeError("this is an async SQLAlchemy object: use the async twin (ainsert, ainsert_all, …)")
    if isinstance(target, Session):
        target = target.connection()
    if isinstance(target, SAConnection):
        # Begin SQLAlchemy's transaction if it hasn't yet (it autobegins only on its own
        # execute()), so that the caller's commit() or rollback() covers the job row.
        if not target.in_transaction():
            target.begin()
        dbapi = target.connection.driver_connection
        if isinstance(dbapi, psycopg.Connection):
            return dbapi
        raise _driver_error(dbapi)
    raise TypeError(f"expected {_SYNC_HINT}, got {type(target).__name__}")


async def async_connection(target: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg async connection (and so the transaction) behind ``target``."""
    if isinstance(target, psycopg.AsyncConnection):
        return target
    if isinstance(target, psycopg.AsyncCursor):
        return target.connection
    if isinstance(target, psycopg.Connection | psycopg.Cursor):
        raise TypeError("this is a sync connection: use the sync function (insert, insert_all, …)")
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover
        raise TypeError(f"expected {_ASYNC_HINT}, got {type(target).__name__}") from None
    if isinstance(target, Session):
        raise TypeError("this is a sync SQLAlchemy Session: use the sync function (insert, insert_all, …)")
    if isinstance(target, AsyncSession):
        target = await target.connection()
    if isinstance(target, SAAsyncConnection):
        if not target.in_transaction():
            await target.begin()
        raw = await target.get_raw_connection()
        dbapi = raw.driver_connection
        if isinstance(dbapi, psycopg.AsyncConnection):
            return dbapi
        raise _driver_error(dbapi)
    raise TypeError(f"expected {_ASYNC_HINT}, got {type(target).__name__}")


_SUPPORTED_SYNC = (
    "a psycopg Connection or Cursor, a psycopg2 connection or cursor, or a SQLAlchemy Session, "
    "Connection or Engine (on psycopg or psycopg2)"
)
_SUPPORTED_ASYNC = (
    "a psycopg AsyncConnection or AsyncCursor, an asyncpg Connection or Pool, or a SQLAlchemy "
    "AsyncSession, AsyncConnection or AsyncEngine (on psycopg or asyncpg)"
)


def _unsupported(target: Any, supported: str) -> TypeError:
    kind = type(target)
    return TypeError(f"can't write jobs through {kind.__module__}.{kind.__qualname__}: expected {supported}")


def _join_sqlalchemy_transaction(execute_through_sqlalchemy: Any) -> None:
    execute_through_sqlalchemy(queries_for().join_transaction)


class _BridgedWriter:
    """A sync SQLAlchemy connection whose driver is async (inside ``AsyncSession.run_sync``): each
    call runs the async writer to completion through SQLAlchemy's adapted connection."""

    def __init__(
        self, bridge: AdaptedConnection, writer: type[AsyncPsycopgWriter] | type[AsyncpgWriter]
    ) -> None:
        self._bridge = bridge
        self._writer = writer

    def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._bridge.run_async(
            lambda conn: self._writer(conn).execute(query, params)
        )
        return rows

    def copy(self, statement: str, blocks: Any) -> None:
        self._bridge.run_async(lambda conn: self._writer(conn).copy(statement, blocks))

    def savepoint(self) -> None:
        return None  # a savepoint can't stay open across run_async calls: SQLAlchemy opens it


def _in_autocommit(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    # In autocommit mode each statement would commit on its own: the notifications before the
    # rows exist, half a batch when the second statement fails.
    return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE


@contextmanager
def _psycopg_writer(conn: psycopg.Connection[Any]) -> Iterator[SyncWriter]:
    if _in_autocommit(conn):
        with conn.transaction():
            yield PsycopgWriter(conn)
    else:
        yield PsycopgWriter(conn)


@asynccontextmanager
async def _apsycopg_writer(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[AsyncWriter]:
    if _in_autocommit(conn):
        async with conn.transaction():
            yield AsyncPsycopgWriter(conn)
    else:
        yield AsyncPsycopgWriter(conn)


@contextmanager
def _psycopg2_writer(conn: Any) -> Iterator[SyncWriter]:
    if conn.autocommit:
        # psycopg2 >= 2.9: `with connection` opens a transaction even in autocommit mode.
        with conn:
            yield Psycopg2Writer(conn)
    else:
        yield Psycopg2Writer(conn)


@contextmanager
def sync_writer(target: Any) -> Iterator[SyncWriter]:
    """A writer in ``target``'s transaction (see the module doc for what ``target`` may be)."""
    if isinstance(target, psycopg.Connection | psycopg.Cursor):
        conn = target if isinstance(target, psycopg.Connection) else target.connection
        with _psycopg_writer(conn) as writer:
            yield writer
        return
    legacy = psycopg2_connection(target)
    if legacy is not None:
        with _psycopg2_writer(legacy) as writer:
            yield writer
        return
    if isinstance(target, psycopg.AsyncConnection | psycopg.AsyncCursor) or is_asyncpg_connection(target):
        raise TypeError("this is an async connection: use the async twin (ainsert, ainsert_all, …)")
    if is_asyncpg_pool(target):
        raise TypeError("this is an asyncpg pool: use the async twin (ainsert, ainsert_all, …)")
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    if isinstance(target, AsyncSession | SAAsyncConnection | AsyncEngine):
        raise TypeError("this is an async SQLAlchemy object: use the async twin (ainsert, ainsert_all, …)")
    if isinstance(target, Engine):
        with target.begin() as connection, sync_writer(connection) as writer:
            yield writer
        return
    if isinstance(target, Session):
        target = target.connection()
    if not isinstance(target, SAConnection):
        raise _unsupported(target, _SUPPORTED_SYNC)
    # Begin SQLAlchemy's transaction if it hasn't yet (it autobegins only on its own execute()),
    # so that the caller's commit() or rollback() covers the job rows.
    if not target.in_transaction():
        target.begin()
    dbapi = target.connection.driver_connection
    if isinstance(dbapi, psycopg.Connection):
        with _psycopg_writer(dbapi) as writer:
            yield writer
    elif psycopg2_connection(dbapi) is not None:
        with _psycopg2_writer(dbapi) as writer:
            yield writer
    elif isinstance(dbapi, psycopg.AsyncConnection):
        yield _BridgedWriter(target.connection.dbapi_connection, AsyncPsycopgWriter)  # type: ignore[arg-type]
    elif is_asyncpg_connection(dbapi):
        if dbapi is not None and not dbapi.is_in_transaction():
            _join_sqlalchemy_transaction(target.exec_driver_sql)
        yield _BridgedWriter(target.connection.dbapi_connection, AsyncpgWriter)  # type: ignore[arg-type]
    else:
        raise _unsupported(dbapi, _SUPPORTED_SYNC)


@asynccontextmanager
async def async_writer(target: Any) -> AsyncIterator[AsyncWriter]:
    """The async twin of :func:`sync_writer`."""
    if isinstance(target, psycopg.AsyncConnection | psycopg.AsyncCursor):
        conn = target if isinstance(target, psycopg.AsyncConnection) else target.connection
        async with _apsycopg_writer(conn) as writer:
            yield writer
        return
    if is_asyncpg_connection(target):
        if target.is_in_transaction():
            yield AsyncpgWriter(target)
        else:
            async with target.transaction():
                yield AsyncpgWriter(target)
        return
    if is_asyncpg_pool(target):
        async with target.acquire() as conn, conn.transaction():
            yield AsyncpgWriter(conn)
        return
    if isinstance(target, psycopg.Connection | psycopg.Cursor) or psycopg2_connection(target) is not None:
        raise TypeError("this is a sync connection: use the sync function (insert, insert_all, …)")
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    if isinstance(target, Session | SAConnection | Engine):
        raise TypeError("this is a sync SQLAlchemy object: use the sync function (insert, insert_all, …)")
    if isinstance(target, AsyncEngine):
        async with target.begin() as connection, async_writer(connection) as writer:
            yield writer
        return
    if isinstance(target, AsyncSession):
        target = await target.connection()
    if not isinstance(target, SAAsyncConnection):
        raise _unsupported(target, _SUPPORTED_ASYNC)
    if not target.in_transaction():
        await target.begin()
    raw = await target.get_raw_connection()
    dbapi = raw.driver_connection
    if isinstance(dbapi, psycopg.AsyncConnection):
        async with _apsycopg_writer(dbapi) as writer:
            yield writer
    elif is_asyncpg_connection(dbapi):
        if dbapi is not None and not dbapi.is_in_transaction():
            await target.exec_driver_sql(queries_for().join_transaction)
        yield AsyncpgWriter(dbapi)
    else:
        raise _unsupported(dbapi, _SUPPORTED_ASYNC)
