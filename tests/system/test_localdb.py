"""Finding a database: the embedded fallback, run for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.system
@pytest.mark.slow
def test_embedded_server_is_started_when_nothing_answers() -> None:
    # A child process: the embedded server must start, serve a migration and stop when it exits.
    code = textwrap.dedent(
        f"""
        import psycopg
        from pgqueue.localdb import find_database
        from pgqueue.migrate import migrate
        found = find_database(port={closed_port()})
        with psycopg.connect(found.dsn) as conn:
            print(found.source, migrate(conn, "embedded_check").current)
            print(conn.execute("show server_version").fetchone()[0])
        print(found.embedded.root)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "embedded True"
    assert "starting an embedded server" in result.stderr
    root = lines[-1]
    assert not os.path.exists(root), "the temporary directory is removed on exit"


def test_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue.localdb import find_database

    monkeypatch.setenv("DATABASE_URL", "postgresql://example.invalid/db")
    found = find_database(quiet=True)
    assert (found.source, found.dsn) == ("env", "postgresql://example.invalid/db")
