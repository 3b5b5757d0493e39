"""Apply, record and roll back the versioned SQL in ``sql/<component>/``.

Each component (``pgqueue`` here; ``chimeway`` has its own set) is a list of numbered files,
``NNNN_name.up.sql`` and ``NNNN_name.down.sql``. The files name no schema: they run with
``search_path`` set to the target schema for the length of the migration, and the schema name
only ever reaches SQL through :class:`psycopg.sql.Identifier`.

Applied versions are recorded in ``<schema>.pgqueue_migrations``; migrating is a no-op when the
schema is current. A concurrent migrator waits on an advisory lock instead of racing.

Applications that manage their schema with Alembic call :func:`alembic_upgrade` /
:func:`alembic_downgrade` from a revision, which run the very same SQL and record the versions,
so ``python -m pgqueue migrate`` afterwards has nothing to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .errors import ConfigError, ForeignTableError, MigrationError, NotMigratedError

__all__ = [
    "PGQUEUE",
    "Migration",
    "MigrationSet",
    "MigrationStatus",
    "alembic_downgrade",
    "alembic_upgrade",
    "averify_migrated",
    "current_version",
    "downgrade_statements",
    "migrate",
    "rollback",
    "status",
    "upgrade_statements",
    "validate_schema_name",
    "verify_migrated",
]

VERSION_TABLE = "pgqueue_migrations"
_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL silently truncates longer names; refuse them instead


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change and its undo."""

    version: int
    name: str
    up: str
    down: str


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The ordered migrations of one component, and the tables it owns."""

    component: str
    migrations: tuple[Migration, ...]
    #: Tables the first migration creates. If one already exists in a schema with no record of
    #: this component, the migrator refuses rather than touch a table it did not make.
    owned_tables: tuple[str, ...]

    @property
    def latest(self) -> int:
        return self.migrations[-1].version if self.migrations else 0

    @classmethod
    def from_directory(
        cls, component: str, directory: Traversable, owned_tables: Sequence[str]
    ) -> MigrationSet:
        ups: dict[int, tuple[str, str]] = {}
        downs: dict[int, str] = {}
        for entry in directory.iterdir():
            match = _FILE_RE.match(entry.name)
            if match is None:
                continue
            version = int(match["version"])
            text = entry.read_text(encoding="utf-8")
            if match["direction"] == "up":
                ups[version] = (match["name"], text)
            else:
                downs[version] = text
        if set(ups) != set(downs):
            raise MigrationError(f"{component}: every migration needs both an .up.sql and a .down.sql file")
        versions = sorted(ups)
        if versions != list(range(1, len(versions) + 1)):
            raise MigrationError(f"{component}: migration versions must run 1, 2, 3, … without gaps")
        migrations = tuple(Migration(v, ups[v][0], ups[v][1], downs[v]) for v in versions)
        return cls(component, migrations, tuple(owned_tables))

    @classmethod
    def from_package(cls, package: str, component: str, owned_tables: Sequence[str]) -> MigrationSet:
        """Load the SQL shipped in ``<package>/_sql`` (a wheel), else from the repository's ``sql/``."""
        return cls.from_directory(component, _sql_directory(package, component), owned_tables)


def _sql_directory(package: str, component: str) -> Traversable:
    bundled = files(package) / "_sql"
    if bundled.is_dir():
        return bundled
    # Running from a source checkout (or an editable install): the files live in sql/<component>/
    # at the repository root, a few levels above the package.
    here = Path(import_module(package).__file__ or ".").resolve().parent
    for parent in here.parents:
        candidate = parent / "sql" / component
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"can't find the SQL files of {component!r}: the installation is incomplete")


PGQUEUE = MigrationSet.from_package("pgqueue", "pgqueue", owned_tables=("jobs",))


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a schema stands for one component, and what a migration did."""

    component: str
    schema: str
    version: int
    latest: int
    applied: tuple[int, ...] = ()
    reverted: tuple[int, ...] = ()

    @property
    def current(self) -> bool:
        return self.version == self.latest


class _Executor(Protocol):
    def execute(self, statement: Any, /) -> Any: ...


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if PostgreSQL will store it as given, else raise :class:`ConfigError`."""
    if not isinstance(schema, str) or not schema:
        raise ConfigError(f"schema must be a non-empty string, got {schema!r}")
    if "\x00" in schema:
        raise ConfigError("schema must not contain a NUL character")
    if "%" in schema:
        # The schema is rendered into statements that also carry %(name)s parameters: a % in it
        # would read as a placeholder.
        raise ConfigError(f"schema must not contain a % character, got {schema!r}")
    if len(schema.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ConfigError(f"schema must be at most {_MAX_IDENTIFIER_BYTES} bytes long, got {schema!r}")
    return schema


def _version_table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, VERSION_TABLE)


def _bootstrap_statements(schema: str) -> list[sql.Composable]:
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " component text NOT NULL,"
            " version integer NOT NULL,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        ).format(_version_table(schema)),
    ]


# The migration runs with search_path pointing at the target schema. The caller's own
# search_path is saved in a custom setting and restored afterwards, so an Alembic revision
# (or a caller's open transaction) sees no lasting change.
_SAVE_PATH = sql.SQL("SELECT set_config('pgqueue.saved_search_path', current_setting('search_path'), true)")
_RESTORE_PATH = sql.SQL(
    "SELECT set_config('search_path', current_setting('pgqueue.saved_search_path'), true)"
)


def _set_path(schema: str) -> sql.Composable:
    return sql.SQL("SELECT set_config('search_path', {}, true)").format(
        sql.Literal(sql.Identifier(schema).as_string(None))
    )


def _record(schema: str, component: str, migration: Migration) -> sql.Composable:
    return sql.SQL("INSERT INTO {} (component, version, name) VALUES ({}, {}, {})").format(
        _version_table(schema),
        sql.Literal(component),
        sql.Literal(migration.version),
        sql.Literal(migration.name),
    )


def _unrecord(schema: str, component: str, version: int) -> sql.Composable:
    return sql.SQL("DELETE FROM {} WHERE component = {} AND version = {}").format(
        _version_table(schema), sql.Literal(component), sql.Literal(version)
    )


def upgrade_statements(
    schema: str = "public",
    migrations: MigrationSet = PGQUEUE,
    *,
    from_version: int = 0,
    to_version: int | None = None,
    bootstrap: bool = True,
) -> list[sql.Composable]:
    """The statements that take ``schema`` from ``from_version`` to ``to_version`` (default: latest).

    With ``bootstrap`` (the default) they start by creating the schema and the version table.
    """
    validate_schema_name(schema)
    target = migrations.latest if to_version is None else to_version
    pending = [m for m in migrations.migrations if from_version < m.version <= target]
    statements: list[sql.Composable] = _bootstrap_statements(schema) if bootstrap else []
    if pending:
        statements += [_SAVE_PATH, _set_path(schema)]
        for migration in pending:
            statements += [sql.SQL(migration.up), _record(schema, migrations.component, migration)]
        statements.append(_RESTORE_PATH)
    return statements


def downgrade_statements(
    schema: str = "public",
    migrations: MigrationSet = PGQUEUE,
    *,
    from_version: int | None = None,
    to_version: int = 0,
) -> list[sql.Composable]:
    """The statements that take ``schema`` back from ``from_version`` (default: latest) to ``to_version``."""
    validate_schema_name(schema)
    start = migrations.latest if from_version is None else from_version
    undo = [m for m in reversed(migrations.migrations) if to_version < m.version <= start]
    if not undo:
        return []
    statements: list[sql.Composable] = [_SAVE_PATH, _set_path(schema)]
    for migration in undo:
        statements += [sql.SQL(migration.down), _unrecord(schema, migrations.component, migration.version)]
    statements.append(_RESTORE_PATH)
    return statements


def _lock(conn: psycopg.Connection[Any], schema: str) -> None:
    # One migrator per schema at a time; the lock ends with the transaction.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgqueue.migrate.' || %s))", (schema,))


def current_version(
    conn: psycopg.Connection[Any], schema: str = "public", migrations: MigrationSet = PGQUEUE
) -> int:
    """The highest applied version of ``migrations`` in ``schema``, 0 when none is."""
    validate_schema_name(schema)
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (_version_table(schema).as_string(None),)
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {} WHERE component = %s").format(
            _version_table(schema)
        ),
        (migrations.component,),
    ).fetchone()
    return int(row[0]) if row else 0


def status(
    conn: psycopg.Connection[Any], schema: str = "public", migrations: MigrationSet = PGQUEUE
) -> MigrationStatus:
    """Where ``schema`` stands: its applied version and the latest one available."""
    return MigrationStatus(
        migrations.component, schema, current_version(conn, schema, migrations), migrations.latest
    )


def _refuse_foreign_tables(conn: psycopg.Connection[Any], schema: str, migrations: MigrationSet) -> None:
    for table in migrations.owned_tables:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, table).as_string(None),)
        ).fetchone()
        if row and row[0]:
            raise ForeignTableError(
                f"schema {schema!r} already has a table named {table!r} that {migrations.component} "
                "did not create; migrate into another schema (--schema) or rename that table"
            )


def _run(conn: _Executor, statements: Iterable[sql.Composable]) -> None:
    for statement in statements:
        conn.execute(statement)


def migrate(
    conn: psycopg.Connection[Any],
    schema: str = "public",
    migrations: MigrationSet = PGQUEUE,
    *,
    to_version: int | None = None,
) -> MigrationStatus:
    """Apply the pending migrations of ``migrations`` to ``schema`` in one transaction.

    Creates the schema when it is missing, is a no-op when the schema is current, and refuses
    (:class:`ForeignTableError`) when a table it would create exists but was not created by it.
    """
    validate_schema_name(schema)
    target = migrations.latest if to_version is None else to_version
    if not 0 <= target <= migrations.latest:
        raise ConfigError(f"to_version must be between 0 and {migrations.latest}, got {to_version}")
    with conn.transaction():
        _lock(conn, schema)
        _run(conn, _bootstrap_statements(schema))
        version = current_version(conn, schema, migrations)
        if version > migrations.latest:
            raise MigrationError(
                f"schema {schema!r} is at {migrations.component} version {version}, newer than this "
                f"installation knows ({migrations.latest}); upgrade the package"
            )
        if version == 0:
            _refuse_foreign_tables(conn, schema, migrations)
        if target < version:
            raise MigrationError(
                f"schema {schema!r} is at version {version}; use rollback to go back to {target}"
            )
        _run(
            conn,
            upgrade_statements(schema, migrations, from_version=version, to_version=target, bootstrap=False),
        )
    applied = tuple(m.version for m in migrations.migrations if version < m.version <= target)
    return MigrationStatus(migrations.component, schema, target, migrations.latest, applied=applied)


def rollback(
    conn: psycopg.Connection[Any],
    schema: str = "public",
    migrations: MigrationSet = PGQUEUE,
    *,
    to_version: int | None = None,
) -> MigrationStatus:
    """Undo migrations down to ``to_version`` (default: one version back) in one transaction."""
    validate_schema_name(schema)
    with conn.transaction():
        _lock(conn, schema)
        version = current_version(conn, schema, migrations)
        target = max(version - 1, 0) if to_version is None else to_version
        if not 0 <= target <= version:
            raise ConfigError(
                f"to_version must be between 0 and the current version {version}, got {to_version}"
            )
        _run(conn, downgrade_statements(schema, migrations, from_version=version, to_version=target))
    reverted = tuple(m.version for m in reversed(migrations.migrations) if target < m.version <= version)
    return MigrationStatus(migrations.component, schema, target, migrations.latest, reverted=reverted)


def verify_migrated(
    conn: psycopg.Connection[Any], schema: str = "public", migrations: MigrationSet = PGQUEUE
) -> None:
    """Raise :class:`NotMigratedError` unless ``schema`` is at the latest version of ``migrations``."""
    version = current_version(conn, schema, migrations)
    if version != migrations.latest:
        raise NotMigratedError(
            f"schema {schema!r} is at {migrations.component} version {version}, "
            f"expected {migrations.latest}; run: python -m pgqueue migrate --schema {schema!r}"
        )


class _AlembicOp(Protocol):
    def execute(self, sqltext: Any, /) -> Any: ...


def _as_text(statement: sql.Composable) -> Any:
    from sqlalchemy import text  # imported here: pgqueue does not need SQLAlchemy otherwise

    # text() treats ":name" as a bind parameter; the SQL files contain "::" casts. Escape colons.
    return text(statement.as_string(None).replace(":", "\\:"))


def alembic_upgrade(op: _AlembicOp, schema: str = "public", migrations: MigrationSet = PGQUEUE) -> None:
    """Call from an Alembic revision's ``upgrade()``: creates the queue's schema objects.

    ``op`` is ``alembic.op``. The versions are recorded as the built-in migrator records them.
    """
    for statement in upgrade_statements(schema, migrations):
        op.execute(_as_text(statement))


def alembic_downgrade(op: _AlembicOp, schema: str = "public", migrations: MigrationSet = PGQUEUE) -> None:
    """Call from an Alembic revision's ``downgrade()``: removes what :func:`alembic_upgrade` made."""
    for statement in downgrade_statements(schema, migrations):
        op.execute(_as_text(statement))


async def averify_migrated(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """The async twin of :func:`verify_migrated`, for pgqueue's own tables."""
    table = sql.Identifier(schema, VERSION_TABLE).as_string(None)
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    exists = (await cursor.fetchone() or (False,))[0]
    version = 0
    if exists:
        query = sql.SQL("SELECT coalesce(max(version), 0) FROM {} WHERE component = 'pgqueue'").format(
            sql.Identifier(schema, VERSION_TABLE)
        )
        version = int((await (await conn.execute(query)).fetchone() or (0,))[0])
    if version != PGQUEUE.latest:
        raise NotMigratedError(
            f"schema {schema!r} is at pgqueue version {version}, expected {PGQUEUE.latest}; "
            f"run: python -m pgqueue migrate --schema {schema!r}"
        )
