"""The migrator: up, down, re-run, version records, refusals and schema names that bite."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgqueue import migrate as m
from pgqueue.errors import ConfigError, ForeignTableError, MigrationError


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, table).as_string(None),)
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


def test_migrate_creates_schema_tables_and_records_version(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    result = m.migrate(conn, empty_schema)

    assert result.applied == tuple(range(1, m.PGQUEUE.latest + 1))
    assert result.version == m.PGQUEUE.latest
    for table in ("jobs", "pgqueue_producers", "pgqueue_leaders", "pgqueue_migrations"):
        assert table_exists(conn, empty_schema, table), table
    rows = conn.execute(
        sql.SQL("SELECT component, version, name FROM {} ORDER BY version").format(
            sql.Identifier(empty_schema, "pgqueue_migrations")
        )
    ).fetchall()
    assert rows[0][:2] == ("pgqueue", 1)
    assert m.current_version(conn, empty_schema) == m.PGQUEUE.latest


def test_migrate_twice_is_a_no_op(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    m.migrate(conn, empty_schema)
    again = m.migrate(conn, empty_schema)

    assert again.applied == ()
    assert again.current
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(empty_schema, "pgqueue_migrations"))
    ).fetchone()
    assert count == (m.PGQUEUE.latest,)


def test_rollback_removes_everything_and_can_be_reapplied(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    m.migrate(conn, empty_schema)

    result = m.rollback(conn, empty_schema, to_version=0)

    assert result.version == 0
    assert result.reverted == tuple(range(m.PGQUEUE.latest, 0, -1))
    assert not table_exists(conn, empty_schema, "jobs")
    assert m.current_version(conn, empty_schema) == 0
    assert m.migrate(conn, empty_schema).version == m.PGQUEUE.latest
    assert table_exists(conn, empty_schema, "jobs")


def test_rollback_defaults_to_one_step_and_is_harmless_at_zero(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    m.migrate(conn, empty_schema)
    assert m.rollback(conn, empty_schema).version == m.PGQUEUE.latest - 1
    m.rollback(conn, empty_schema, to_version=0)
    assert m.rollback(conn, empty_schema).reverted == ()


def test_refuses_a_jobs_table_it_did_not_create(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty_schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int, payload text)").format(sql.Identifier(empty_schema, "jobs"))
    )
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1, 'precious')").format(sql.Identifier(empty_schema, "jobs"))
    )
    conn.commit()

    with pytest.raises(ForeignTableError, match="already has a table named 'jobs'"):
        m.migrate(conn, empty_schema)

    # Nothing of theirs was touched and nothing of ours was left behind.
    assert conn.execute(
        sql.SQL("SELECT payload FROM {}").format(sql.Identifier(empty_schema, "jobs"))
    ).fetchall() == [("precious",)]
    assert m.current_version(conn, empty_schema) == 0


@pytest.mark.parametrize(
    "name", ["Weird Schema", 'x"; drop table jobs; --', "x; drop table jobs", "ünïcode-schéma"]
)
def test_schema_names_are_quoted_never_interpreted(
    conn: psycopg.Connection[Any], dsn: str, name: str
) -> None:
    # A bystander table named jobs in public must survive whatever the schema name says.
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    try:
        m.migrate(conn, name)
        assert table_exists(conn, name, "jobs")
        conn.execute(
            sql.SQL("INSERT INTO {} (worker) VALUES ('w')").format(sql.Identifier(name, "jobs")),
        )
        conn.commit()
        assert m.current_version(conn, name) == m.PGQUEUE.latest
        m.rollback(conn, name, to_version=0)
        assert not table_exists(conn, name, "jobs")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.parametrize("bad", ["", "x" * 64, "nul\x00byte"])
def test_invalid_schema_names_are_refused_clearly(conn: psycopg.Connection[Any], bad: str) -> None:
    with pytest.raises(ConfigError, match="schema must"):
        m.migrate(conn, bad)


def test_migration_restores_the_callers_search_path(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    before = conn.execute("SHOW search_path").fetchone()
    with conn.transaction():
        m.migrate(conn, empty_schema)
        inside = conn.execute("SHOW search_path").fetchone()
    assert inside == before


def test_refuses_a_schema_newer_than_the_package(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    m.migrate(conn, empty_schema)
    conn.execute(
        sql.SQL("INSERT INTO {} (component, version, name) VALUES ('pgqueue', 999, 'future')").format(
            sql.Identifier(empty_schema, "pgqueue_migrations")
        )
    )
    conn.commit()
    with pytest.raises(MigrationError, match="newer than this installation"):
        m.migrate(conn, empty_schema)


def test_verify_migrated_explains_what_to_run(conn: psycopg.Connection[Any], empty_schema: str) -> None:
    with pytest.raises(m.NotMigratedError, match="python -m pgqueue migrate"):
        m.verify_migrated(conn, empty_schema)
    m.migrate(conn, empty_schema)
    m.verify_migrated(conn, empty_schema)


def test_alembic_helpers_run_the_same_sql_and_record_versions(
    dsn: str, sqlalchemy_url: str, empty_schema: str
) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url)
    try:
        with engine.begin() as connection:
            op = Operations(MigrationContext.configure(connection))
            m.alembic_upgrade(op, empty_schema)
            # The revision's own later operations still see the caller's search_path.
            path = connection.exec_driver_sql("SHOW search_path").scalar()
            assert empty_schema not in str(path)
        with psycopg.connect(dsn) as conn:
            assert m.current_version(conn, empty_schema) == m.PGQUEUE.latest
            assert m.migrate(conn, empty_schema).applied == ()
        with engine.begin() as connection:
            m.alembic_downgrade(Operations(MigrationContext.configure(connection)), empty_schema)
        with psycopg.connect(dsn) as conn:
            assert m.current_version(conn, empty_schema) == 0
            assert not table_exists(conn, empty_schema, "jobs")
    finally:
        engine.dispose()


def test_concurrent_migrators_apply_once(dsn: str, empty_schema: str) -> None:
    import threading

    results: list[m.MigrationStatus] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn) as c:
                results.append(m.migrate(c, empty_schema))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(len(r.applied) for r in results) == [0, 0, 0, m.PGQUEUE.latest]


def test_queue_control_arrives_with_version_2_and_leaves_with_it(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    m.migrate(conn, empty_schema, to_version=1)
    assert table_exists(conn, empty_schema, "jobs")
    assert not table_exists(conn, empty_schema, "pgqueue_signals")

    assert m.migrate(conn, empty_schema, to_version=2).applied == (2,)
    assert table_exists(conn, empty_schema, "pgqueue_signals")

    assert m.rollback(conn, empty_schema).reverted == (2,)
    assert not table_exists(conn, empty_schema, "pgqueue_signals")
    assert table_exists(conn, empty_schema, "jobs")


def test_the_dashboard_index_arrives_with_version_3_and_leaves_with_it(
    conn: psycopg.Connection[Any], empty_schema: str
) -> None:
    def has_index() -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{empty_schema}".jobs_state_id_idx',)).fetchone()
        return row is not None and row[0] is not None

    m.migrate(conn, empty_schema, to_version=2)
    assert not has_index()
    assert m.migrate(conn, empty_schema, to_version=3).applied == (3,)
    assert has_index()
    assert m.rollback(conn, empty_schema, to_version=2).reverted == (3,)
    assert not has_index()


def test_a_role_that_can_only_connect_can_not_write_signals(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    row = conn.execute(
        "SELECT has_table_privilege('public', %s, 'INSERT')",
        (sql.Identifier(schema, "pgqueue_signals").as_string(None),),
    ).fetchone()
    assert row == (False,)


def test_a_schema_name_with_a_percent_sign_is_refused() -> None:
    with pytest.raises(ConfigError, match="must not contain a % character"):
        m.validate_schema_name("pct%schema")
