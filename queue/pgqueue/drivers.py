"""The database drivers an application may enqueue through, each behind one small interface.

pgqueue's runtime works on psycopg 3, but jobs are written on the caller's own connection, from
whatever driver it uses: psycopg 3, psycopg2 or asyncpg (directly or under SQLAlchemy). A
*writer* runs pgqueue's statements on such a connection, inside the transaction it has open:

* ``execute(query, params)`` runs one statement of ``queries/`` (psycopg's ``%(name)s``
  placeholders) and returns its rows as tuples, a job's json columns decoded;
* ``copy(statement, blocks)`` streams COPY text-format rows into ``COPY … FROM STDIN``.

psycopg2 shares psycopg's placeholder style; for asyncpg the statement is rewritten to ``$n``
placeholders once per statement text. COPY goes through ``cursor.copy_expert`` on psycopg2 and
``copy_to_table`` on asyncpg, the same rows in the same format on every driver. Neither optional
driver is imported here unless the caller's object comes from it.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

__all__ = [
    "AsyncPsycopgWriter",
    "AsyncWriter",
    "AsyncpgWriter",
    "Psycopg2Writer",
    "PsycopgWriter",
    "SyncWriter",
    "data_error_details",
    "is_asyncpg_connection",
    "is_asyncpg_pool",
    "psycopg2_connection",
]

_PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]|%%")
#: the json/jsonb columns of the rows pgqueue's statements return (a job's), which asyncpg hands
#: over as text; its records carry names, not types
_JSON_COLUMNS = frozenset({"args", "meta", "errors"})
_IDENTIFIER = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([A-Za-z_][A-Za-z0-9_$]*))\s*')
_COPY_TARGET = re.compile(r"^\s*COPY\s+(.*?)\s*\((.*)\)\s*FROM\s+STDIN\s*$", re.IGNORECASE | re.DOTALL)


class SyncWriter(Protocol):
    """Runs pgqueue's statements in the caller's transaction, from synchronous code."""

    def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    def copy(self, statement: str, blocks: Iterable[str]) -> None: ...

    def savepoint(self) -> AbstractContextManager[Any] | None:
        """A savepoint the driver opens itself, or None: then open one through SQLAlchemy."""
        ...


class AsyncWriter(Protocol):
    """The async twin of :class:`SyncWriter`."""

    async def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    async def copy(self, statement: str, blocks: Iterable[str]) -> None: ...

    def savepoint(self) -> AbstractAsyncContextManager[Any] | None:
        """A savepoint the driver opens itself, or None: then open one through SQLAlchemy."""
        ...


class PsycopgWriter:
    """psycopg 3, synchronous."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(query, params)
            # (`cur.description` would build a Column per field on every call, just to ask this.)
            result = cur.pgresult
            if result is None or result.status != pq.ExecStatus.TUPLES_OK:
                return []
            return _json_decoded(result, cur.fetchall())

    def copy(self, statement: str, blocks: Iterable[str]) -> None:
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            for block in blocks:
                copy.write(block)

    def savepoint(self) -> AbstractContextManager[Any]:
        return self.conn.transaction()


class AsyncPsycopgWriter:
    """psycopg 3, asynchronous."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with self.conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(query, params)
            result = cur.pgresult
            if result is None or result.status != pq.ExecStatus.TUPLES_OK:
                return []
            return _json_decoded(result, await cur.fetchall())

    async def copy(self, statement: str, blocks: Iterable[str]) -> None:
        async with self.conn.cursor() as cur, cur.copy(statement) as copy:
            for block in blocks:
                await copy.write(block)

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        return self.conn.transaction()


_JSON_OIDS = frozenset({114, 3802})  # json, jsonb


def _json_decoded(result: pq.abc.PGresult, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` with json/jsonb values decoded where the connection loads them as text (Django
    configures its psycopg connections so)."""
    columns = [i for i in range(result.nfields) if result.ftype(i) in _JSON_OIDS]
    if not columns or not rows or not any(isinstance(rows[0][i], str) for i in columns):
        return rows
    return [_decode_json(row, columns) for row in rows]


@functools.lru_cache(maxsize=256)
def _pyformat(query: str) -> str:
    """``query`` for psycopg2: psycopg's binary/text placeholders (``%(x)b``) become ``%(x)s``."""
    return _PLACEHOLDER.sub(lambda m: m.group(0) if m.group(1) is None else f"%({m.group(1)})s", query)


@functools.lru_cache(maxsize=256)
def _numbered(query: str) -> tuple[str, tuple[str, ...]]:
    """``query`` with ``$n`` placeholders for asyncpg, and the parameter name of each ``n``."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, query), tuple(names)


class _BlockReader:
    """The file-like object psycopg2's ``copy_expert`` reads: COPY blocks, produced on demand."""

    def __init__(self, blocks: Iterable[str]) -> None:
        self._blocks = iter(blocks)
        self._rest = ""
        #: what producing the blocks raised: psycopg2 reports it only as a cancelled COPY
        self.error: Exception | None = None

    def read(self, size: int = -1) -> str:
        while size < 0 or len(self._rest) < size:
            try:
                block = next(self._blocks, None)
            except Exception as exc:
                self.error = exc
                raise
            if block is None:
                break
            self._rest += block
        if size < 0:
            size = len(self._rest)
        chunk, self._rest = self._rest[:size], self._rest[size:]
        return chunk

    readline = read


class Psycopg2Writer:
    """psycopg2: the same placeholders; ``json``/``jsonb`` come back decoded already."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(_pyformat(query), dict(params))
            if cur.description is None:
                return []
            return [tuple(row) for row in cur.fetchall()]

    def copy(self, statement: str, blocks: Iterable[str]) -> None:
        reader = _BlockReader(blocks)
        with self.conn.cursor() as cur:
            try:
                cur.copy_expert(statement, reader)
            except Exception:
                if reader.error is not None:
                    raise reader.error from None
                raise

    def savepoint(self) -> None:
        return None  # psycopg2 has no savepoint call


def _copy_target(statement: str) -> tuple[str | None, str, list[str]]:
    """The schema, table and columns of ``COPY "schema"."table" (a, b) FROM STDIN``.

    asyncpg has no call taking a COPY statement as text; its ``copy_to_table`` takes these
    three and quotes them itself.
    """
    match = _COPY_TARGET.match(statement)
    if match is None:
        raise ValueError(f"not a COPY … FROM STDIN statement: {statement[:80]!r}")
    names = _identifiers(match.group(1), ".")
    columns = _identifiers(match.group(2), ",")
    if not 1 <= len(names) <= 2 or not columns:
        raise ValueError(f"can't read the table and columns of {statement[:80]!r}")
    schema = names[0] if len(names) == 2 else None
    return schema, names[-1], columns


def _identifiers(text: str, separator: str) -> list[str]:
    names: list[str] = []
    for part in _split_outside_quotes(text, separator):
        match = _IDENTIFIER.fullmatch(part)
        if match is None:
            raise ValueError(f"not an identifier: {part!r}")
        quoted, bare = match.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
    return names


def _split_outside_quotes(text: str, separator: str) -> Iterator[str]:
    start, quoted = 0, False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield text[start:index]
            start = index + 1
    yield text[start:]


async def _encoded(blocks: Iterable[str]) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block.encode("utf-8")


class AsyncpgWriter:
    """asyncpg: ``$n`` placeholders; a job's ``args``, ``meta`` and ``errors`` arrive as text and
    are decoded here."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        text, names = _numbered(query)
        # fetch(), not prepare(): it goes through the connection's statement cache, one round trip,
        # and keeps to the caller's settings (statement_cache_size=0 behind a pooler).
        records = await self.conn.fetch(text, *(params[name] for name in names))
        if not records:
            return []
        rows = [tuple(record) for record in records]
        json_columns = [i for i, key in enumerate(records[0].keys()) if key in _JSON_COLUMNS]
        if json_columns and any(isinstance(rows[0][i], str) for i in json_columns):
            rows = [_decode_json(row, json_columns) for row in rows]
        return rows

    async def copy(self, statement: str, blocks: Iterable[str]) -> None:
        schema, table, columns = _copy_target(statement)
        # The text format, not asyncpg's default binary: the rows are COPY text.
        await self.conn.copy_to_table(
            table, schema_name=schema, columns=columns, source=_encoded(blocks), format="text"
        )

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        # Inside a transaction (the writer's contexts make sure of it) asyncpg nests a savepoint.
        transaction: AbstractAsyncContextManager[Any] = self.conn.transaction()
        return transaction


def _decode_json(row: tuple[Any, ...], columns: list[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in columns:
        if isinstance(values[i], str):
            values[i] = orjson.loads(values[i])
    return tuple(values)


def psycopg2_connection(target: Any) -> Any:
    """The psycopg2 connection of a psycopg2 connection or cursor, else None."""
    extensions = sys.modules.get("psycopg2.extensions")
    if extensions is None:
        return None
    if isinstance(target, extensions.connection):
        return target
    if isinstance(target, extensions.cursor):
        return target.connection
    return None


def is_asyncpg_connection(target: Any) -> bool:
    """An asyncpg connection, or the proxy a pool hands out."""
    if "asyncpg" not in sys.modules:
        return False
    import asyncpg.pool

    return isinstance(target, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)


def is_asyncpg_pool(target: Any) -> bool:
    if "asyncpg" not in sys.modules:
        return False
    import asyncpg

    return isinstance(target, asyncpg.Pool)


def data_error_details(exc: BaseException) -> tuple[str, str] | None:
    """(message, context) when ``exc`` is the database refusing a value (SQLSTATE class 22), on
    any driver; else None."""
    if isinstance(exc, psycopg.errors.DataError):
        return exc.diag.message_primary or str(exc), exc.diag.context or ""
    psycopg2_errors = sys.modules.get("psycopg2")
    if psycopg2_errors is not None and isinstance(exc, psycopg2_errors.DataError):
        diag = exc.diag
        return diag.message_primary or str(exc), diag.context or ""
    asyncpg_module = sys.modules.get("asyncpg")
    if asyncpg_module is not None and isinstance(exc, asyncpg_module.DataError):
        return str(getattr(exc, "message", exc)), str(getattr(exc, "context", "") or "")
    return None
