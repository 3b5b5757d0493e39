"""Real worker processes for the scenarios: start them, kill, freeze, stop them, read their memory.

A :class:`Fleet` starts ``python -m pgqueue start`` and ``python -m chimeway.worker`` processes,
each with its stderr in a log file, and owns them: whatever is still running when the fleet closes
is thawed and killed, by process id. Nothing here touches a process the fleet did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .report import Check
from .workers import DSN_VARIABLE, SCHEMA_VARIABLE

__all__ = ["REPOSITORY", "ConditionTimeout", "Fleet", "Process", "clean_exits", "fleet", "wait_until"]

REPOSITORY = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class ConditionTimeout(AssertionError):
    """A condition a scenario waited for did not hold before its deadline."""


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.05, message: str = "") -> T:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(message or f"condition not met within {timeout:g}s (last: {value!r})")
        time.sleep(interval)


@dataclass
class Process:
    """One child process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started_at: float = field(default_factory=time.monotonic)
    frozen: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """``kill -9``, then reap it."""
        if self.frozen:
            self.thaw()
        self.popen.kill()
        self.popen.wait(30)

    def freeze(self) -> None:
        """``SIGSTOP``: the process stops in its tracks, sockets open, heartbeats silent."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self, timeout: float) -> int:
        """SIGTERM and the exit status; killed (status reported as -9) if it outlives ``timeout``."""
        if not self.alive():
            return int(self.popen.returncode)
        if self.frozen:
            self.thaw()
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def rss_kib(self) -> int | None:
        """Resident memory in KiB (from /proc on Linux, ``ps`` elsewhere); None once it has gone."""
        status = Path(f"/proc/{self.pid}/status")
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        if sys.platform.startswith("linux"):
            return None
        result = subprocess.run(["ps", "-o", "rss=", "-p", str(self.pid)], capture_output=True, text=True)
        text = result.stdout.strip()
        return int(text) if text.isdigit() else None


class Fleet:
    """Starts and owns the processes of one scenario; :meth:`close` kills whatever still runs."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self._counter = 0

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
            **extra,
        }
        return env

    def spawn(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> Process:
        self._counter += 1
        log = self.logs / f"{self._counter:03d}-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(command), cwd=REPOSITORY, env=self._env(env), stdout=out, stderr=subprocess.STDOUT
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def pgqueue(
        self,
        name: str,
        dsn: str,
        schema: str,
        *,
        queues: str = "default:10",
        heartbeat_interval: float = 0.5,
        rescue_window: float = 5.0,
        shutdown_grace: float = 5.0,
        prune_after: float | None = None,
        log_level: str = "warning",
        extra_env: Mapping[str, str] | None = None,
    ) -> Process:
        """``python -m pgqueue start`` running :mod:`chaos.workers` as node ``name``."""
        command = [
            sys.executable, "-m", "pgqueue", "start",
            "--dsn", dsn,
            "--schema", schema,
            "--queues", queues,
            "--workers", "chaos.workers",
            "--node", name,
            "--heartbeat-interval", str(heartbeat_interval),
            "--rescue-window", str(rescue_window),
            "--shutdown-grace", str(shutdown_grace),
            "--log-level", log_level,
        ]  # fmt: skip
        if prune_after is not None:
            command += ["--prune-after", str(prune_after)]
        env = {DSN_VARIABLE: dsn, SCHEMA_VARIABLE: schema, **(extra_env or {})}
        return self.spawn(name, command, env)

    def chimeway(self, name: str, dsn: str, config: Path) -> Process:
        """``python -m chimeway.worker --config config`` with ``DATABASE_URL`` set to ``dsn``."""
        command = [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"]
        return self.spawn(name, command, {"DATABASE_URL": dsn})

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.alive()]

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.kill()


@contextmanager
def fleet(logs: Path) -> Iterator[Fleet]:
    """A :class:`Fleet` whose processes are all gone when the block ends, however it ends."""
    owned = Fleet(logs)
    try:
        yield owned
    finally:
        owned.close()


def clean_exits(
    processes: list[Process], *, ready: Callable[[Process], bool] | None = None, timeout: float = 30.0
) -> list[Check]:
    """SIGTERM the survivors: each must exit 0 with no traceback in its log. The checks, to append last.

    ``ready`` says whether a process has finished starting: a replacement started a moment ago is
    given time to install its signal handlers first (a SIGTERM during its imports just kills it).
    """
    alive = [p for p in processes if p.alive()]
    if ready is not None:
        with contextlib.suppress(ConditionTimeout):
            wait_until(lambda: all(ready(p) for p in alive if p.alive()), timeout=60, interval=0.2)
    statuses = {p.name: p.stop(timeout) for p in alive}
    tracebacks = [p.name for p in processes if "Traceback" in p.output()]
    return [
        Check(
            "surviving processes stop cleanly on SIGTERM (exit 0)",
            bool(statuses) and all(s == 0 for s in statuses.values()),
            ", ".join(f"{n}: {s}" for n, s in statuses.items()),
        ),
        Check(
            "no process logged a traceback",
            not tracebacks,
            ", ".join(tracebacks) or f"{len(processes)} logs read",
        ),
    ]
