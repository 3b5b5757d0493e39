"""Fixtures: a real PostgreSQL, one fresh schema per test, sync and async connections."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from pgqueue import migrate as migrations
from pgqueue.localdb import find_database

TEST_DATABASE = "pgqueue_tests"


def _component_sets() -> list[migrations.MigrationSet]:
    sets = [migrations.PGQUEUE]
    try:
        from chimeway.migrations import CHIMEWAY
    except ImportError:
        return sets
    return [*sets, CHIMEWAY]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def dsn() -> str:
    """A database only the tests use. ``DATABASE_URL`` is used as given when set."""
    found = find_database()
    if found.source == "env":
        return found.dsn
    # On a shared server, keep our schemas out of the default database.
    info = psycopg.conninfo.conninfo_to_dict(found.dsn)
    with psycopg.connect(found.dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEST_DATABASE,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DATABASE)))
    info["dbname"] = TEST_DATABASE
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def sqlalchemy_url(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host = info.get("host") or ""
    url = make_url("postgresql+psycopg://")
    url = url.set(
        username=info.get("user"),
        password=info.get("password"),
        host=None if host.startswith("/") else host,
        port=int(info["port"]) if info.get("port") else None,
        database=info.get("dbname"),
        query={"host": host} if host.startswith("/") else {},
    )
    return url.render_as_string(hide_password=False)


def new_schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(dsn: str, name: str, *, lock_timeout: str = "0") -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        except psycopg.errors.LockNotAvailable:
            return False
    return True


@pytest.fixture(scope="session")
def _leftover_schemas(dsn: str) -> Iterator[list[str]]:
    leftovers: list[str] = []
    yield leftovers
    for name in leftovers:
        drop_schema(dsn, name)


@pytest.fixture
def empty_schema(dsn: str, _leftover_schemas: list[str]) -> Iterator[str]:
    """A schema name nobody uses yet; dropped (if created) after the test."""
    name = new_schema_name()
    yield name
    # A connection the test opened may still hold locks in the schema (fixtures are torn down
    # in reverse order); then the schema is dropped at the end of the session instead.
    if not drop_schema(dsn, name, lock_timeout="500ms"):
        _leftover_schemas.append(name)


@pytest.fixture
def components() -> list[migrations.MigrationSet]:
    """What ``schema`` migrates: every component here; the queue's own suites override it."""
    return _component_sets()


@pytest.fixture
def schema(dsn: str, empty_schema: str, components: list[migrations.MigrationSet]) -> str:
    """A fresh schema with ``components`` migrated into it."""
    with psycopg.connect(dsn) as conn:
        for component in components:
            migrations.migrate(conn, empty_schema, component)
    return empty_schema


# The connection fixtures depend on empty_schema so that they are closed (rolling back what the
# test left open) before the schema is dropped.
@pytest.fixture
def conn(dsn: str, empty_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as connection:
        yield connection


@pytest.fixture
async def aconn(dsn: str, empty_schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn) as connection:
        yield connection


@pytest.fixture(scope="session")
def sa_engine(sqlalchemy_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url, pool_size=5)
    yield engine
    engine.dispose()


@pytest.fixture
def sa_session(sa_engine: Engine, schema: str) -> Iterator[Session]:
    with Session(sa_engine.execution_options(schema_translate_map={None: schema})) as session:
        yield session


@pytest.fixture
async def sa_async_engine(sqlalchemy_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sa_async_session(sa_async_engine: AsyncEngine, schema: str) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(
        sa_async_engine.execution_options(schema_translate_map={None: schema})
    ) as session:
        yield session


def pytest_report_header() -> str:
    return f"DATABASE_URL={'set' if os.environ.get('DATABASE_URL') else 'unset'}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``) the slow and system tests (real
    processes, kills, restarts, browsers, timing of shutdowns) run one after another on one worker,
    beside the fast tests on the others, so no two of them compete for the machine. A slow test that
    only waits for the clock names a group of its own (``xdist_group``) and runs beside the rest."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("slow") or item.get_closest_marker("system"):
            item.add_marker(pytest.mark.xdist_group("serial"))
