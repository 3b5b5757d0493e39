"""A private PgBouncer for the tests: Debian's ``pgbouncer``, started from a temporary config.

It listens on a free local port in front of the tests' PostgreSQL and is stopped (SIGTERM, then
SIGKILL) when the test is done. PgBouncer refuses to run as root; started by root, it switches to
the ``postgres`` user (else ``nobody``) and its directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers import wait_until

__all__ = ["PgBouncer", "pgbouncer"]

INSTALL_HINT = "PgBouncer is not installed: apt-get install -y pgbouncer (.ci/run installs it)"


@dataclass
class PgBouncer:
    """A running PgBouncer: ``dsn`` reaches the backend of ``direct_dsn`` through it."""

    dsn: str
    direct_dsn: str
    mode: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("PgBouncer can't run as root and neither 'postgres' nor 'nobody' exists")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextmanager
def pgbouncer(direct_dsn: str, *, mode: str = "transaction", pool_size: int = 20) -> Iterator[PgBouncer]:
    """Run PgBouncer in ``mode`` (transaction, session) in front of ``direct_dsn``'s server."""
    binary = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(path)), None
    )
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    info = conninfo_to_dict(direct_dsn)
    with psycopg.connect(direct_dsn) as conn:
        user = str(conn.info.user)
        dbname = str(conn.info.dbname)
        host = str(conn.info.host)
        backend_port = int(conn.info.port)
    password = str(info.get("password") or "")
    port = _free_port()
    owner = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))
    log = directory / "pgbouncer.log"
    users = directory / "users.txt"
    users.write_text(f"{_quote(user)} {_quote(password)}\n")
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{dbname} = host={host} port={backend_port} dbname={dbname}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        f"pool_mode = {mode}\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 1000\n"
        f"logfile = {log}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
        # psycopg sends these at connect time; PgBouncer forwards only what it knows
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    command = [binary, str(config)]
    if owner is not None:
        account = pwd.getpwnam(owner)
        for path in (directory, users, config):
            os.chown(path, account.pw_uid, account.pw_gid)
        command[1:1] = ["-u", owner]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dsn = make_conninfo("", host="127.0.0.1", port=port, dbname=dbname, user=user, password=password or None)
    bouncer = PgBouncer(dsn, direct_dsn, mode, log)

    def accepting() -> bool:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {error}{bouncer.output()}")
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    try:
        wait_until(accepting, timeout=15, interval=0.05, message="pgbouncer never accepted a connection")
        yield bouncer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)
