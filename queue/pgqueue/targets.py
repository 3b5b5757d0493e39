"""Where jobs are written: the caller's own connection, whatever library it comes from.

pgqueue writes with psycopg 3. A psycopg connection or cursor is used as is; a SQLAlchemy
``Session``/``Connection`` (or their async twins) is unwrapped to the psycopg connection under
it, so the job joins the very transaction the application is in. SQLAlchemy engines on other
drivers are refused with a clear message rather than half-supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import AdaptedConnection

__all__ = [
    "SyncExecutor",
    "async_connection",
    "async_driver_bridge",
    "sync_connection",
    "sync_executor",
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
