"""``python -m pgqueue``: migrate and version, and one clear line for every error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import sql


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pgqueue", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_prints_package_and_schema_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("pgqueue ")
    assert "schema version" in result.stdout


def test_migrate_twice_second_run_does_nothing_and_says_so(dsn: str, empty_schema: str) -> None:
    first = run_cli("migrate", "--schema", empty_schema, env={"DATABASE_URL": dsn})
    second = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema)

    assert first.returncode == 0, first.stderr
    assert "applied 1" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout


def test_migrate_down_rolls_back(dsn: str, empty_schema: str) -> None:
    assert run_cli("migrate", "--dsn", dsn, "--schema", empty_schema).returncode == 0
    down = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema, "--down", "--to", "0")
    assert down.returncode == 0, down.stderr
    assert "rolled back" in down.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def test_unreachable_server_is_one_line() -> None:
    result = run_cli("migrate", "--dsn", f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres")
    assert_one_line_error(result, "cannot reach the database")


def test_bad_dsn_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate", "--dsn", "this is not a dsn"), "pgqueue:")


def test_missing_dsn_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate"), "DATABASE_URL")


def test_bad_flag_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate", "--frobnicate"), "unrecognized arguments")
    assert_one_line_error(run_cli("migrate", "--schema", "x" * 80), "at most 63 bytes")


def test_foreign_jobs_table_is_one_line(dsn: str, empty_schema: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty_schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(empty_schema, "jobs")))
    conn.commit()
    assert_one_line_error(run_cli("migrate", "--dsn", dsn, "--schema", empty_schema), "did not create")


@pytest.mark.parametrize("password", ["s3cr3t-pa55"])
def test_errors_never_echo_the_password(password: str) -> None:
    result = run_cli(
        "migrate", "--dsn", f"postgresql://postgres:{password}@127.0.0.1:{closed_port()}/postgres"
    )
    assert password not in result.stderr
