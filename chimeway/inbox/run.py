"""The executors of the inbox's plans: a SQLAlchemy ``Session``, an ``AsyncSession``, a psycopg
``AsyncConnection``. This is the only place the inbox does I/O.

Chimeway's tables sit in the schema the session maps them to (``schema_translate_map`` with the
key None, as :mod:`chimeway.models` says), else in ``public``; the plain-SQL statements are
rendered for that same schema.

Transactions follow :mod:`chimeway.deliveries`: a write joins the transaction the caller has
open (the caller commits), or runs in a transaction of its own that commits when it ends. No
savepoint is taken: every write is one statement, atomic by itself. Reads run in the caller's
transaction (SQLAlchemy opens one if none is open, as for any query).
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..store import queries_for
from .plans import PlainQuery, Plan, Rows, Step

__all__ = ["arun", "arun_on_connection", "awrite", "run", "write"]

T = TypeVar("T")


def _schema(connection: Connection) -> str:
    mapping = connection.get_execution_options().get("schema_translate_map") or {}
    return str(mapping.get(None) or "public")


def _execute(session: Session, step: Step) -> Rows:
    if isinstance(step, PlainQuery):
        connection = session.connection()
        text = queries_for(_schema(connection))[step.name]
        return connection.exec_driver_sql(text, dict(step.params)).all()
    return session.execute(step.statement, dict(step.params)).all()


async def _aexecute(session: AsyncSession, step: Step) -> Rows:
    if isinstance(step, PlainQuery):
        connection = await session.connection()
        text = queries_for(_schema(connection.sync_connection))[step.name]  # type: ignore[arg-type]
        return (await connection.exec_driver_sql(text, dict(step.params))).all()
    return (await session.execute(step.statement, dict(step.params))).all()


def run(session: Session, plan: Plan[T]) -> T:
    """Run ``plan``'s statements on ``session`` and return its result."""
    try:
        step = next(plan)
        while True:
            step = plan.send(_execute(session, step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(session: AsyncSession, plan: Plan[T]) -> T:
    """The async twin of :func:`run`."""
    try:
        step = next(plan)
        while True:
            step = plan.send(await _aexecute(session, step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def write(session: Session, plan: Plan[T]) -> T:
    """:func:`run` for a plan that writes: in the caller's transaction, else in one of its own."""
    if session.in_transaction():
        return run(session, plan)
    with session.begin():
        return run(session, plan)


async def awrite(session: AsyncSession, plan: Plan[T]) -> T:
    """The async twin of :func:`write`."""
    if session.in_transaction():
        return await arun(session, plan)
    async with session.begin():
        return await arun(session, plan)


async def arun_on_connection(conn: psycopg.AsyncConnection[Any], schema: str, plan: Plan[T]) -> T:
    """Run a plan made only of plain-SQL statements on a psycopg connection, for ``schema``."""
    queries = queries_for(schema)
    try:
        step = next(plan)
        while True:
            if not isinstance(step, PlainQuery):
                raise TypeError(f"a psycopg connection runs only plain-SQL statements, not {step!r}")
            cursor = await conn.execute(queries[step.name], dict(step.params))
            step = plan.send(await cursor.fetchall())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
