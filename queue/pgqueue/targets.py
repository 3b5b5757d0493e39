"""Where jobs are written: the caller's own connection, whatever library it comes from.

pgqueue writes with psycopg 3. A psycopg connection or cursor is used as is; a SQLAlchemy
``Session``/``Connection`` (or their async twins) is unwrapped to the psycopg connection under
it, so the job joins the very transaction the application is in. SQLAlchemy engines on other
drivers are refused with a clear message rather than half-supported.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["async_connection", "sync_connection"]

_SYNC_HINT = "a psycopg Connection or Cursor, or a SQLAlchemy Session or Connection"
_ASYNC_HINT = "a psycopg AsyncConnection or AsyncCursor, or a SQLAlchemy AsyncSession or AsyncConnection"


def _driver_error(dbapi: Any) -> TypeError:
    return TypeError(
        "pgqueue writes through psycopg 3: create the SQLAlchemy engine with the psycopg driver "
        f"(postgresql+psycopg://…); this one uses {type(dbapi).__module__}.{type(dbapi).__name__}"
    )


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
