"""The runner's side of the adapter contract: start an adapter, read its JSON lines, stop it."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.environments import KIT_DIR, REPO_DIR, SystemSpec

Json = dict[str, Any]


class AdapterError(Exception):
    """An adapter failed, timed out or broke the contract; the message carries its stderr tail."""


@dataclass(frozen=True)
class Adapter:
    spec: SystemSpec
    python: Path

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        # Bytecode caching stays on so the environments' modules compile once, not every start.
        for key in ("VIRTUAL_ENV", "PYTHONHOME", "BENCH_REEXECED", "PYTHONDONTWRITEBYTECODE"):
            env.pop(key, None)
        env["PYTHONPATH"] = str(KIT_DIR)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, task: Json) -> Running:
        stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - Running closes it
        proc = subprocess.Popen(
            [str(self.python), str(self.spec.adapter), json.dumps(task)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_DIR,
            env=self._environ(),
        )
        return Running(self.spec.name, task["action"], proc, stderr)

    def call(self, task: Json, timeout_s: float = 600.0) -> Json:
        """Run a task to completion (``info``, ``setup``, ``enqueue``) and return its result."""
        return self.start(task).finish(timeout_s)


class Running:
    """One adapter process; a thread collects its stdout lines as they come."""

    def __init__(self, system: str, action: str, proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.system = system
        self.action = action
        self.proc = proc
        self._stderr = stderr
        self._lines: list[Json] = []
        self._ready = threading.Event()
        self.ready_at: float | None = None
        self._reader = threading.Thread(target=self._read, name=f"bench-{system}-{action}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("{"):
                continue
            try:
                payload = json.loads(line)
            except json.JSONDecodeError:
                continue
            if payload.get("event") == "ready":
                self.ready_at = float(payload["t"])
                self._ready.set()
            else:
                self._lines.append(payload)

    def stderr_tail(self, lines: int = 12) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def _fail(self, message: str) -> AdapterError:
        tail = self.stderr_tail()
        return AdapterError(f"{self.system} {self.action}: {message}" + (f"\n{tail}" if tail else ""))

    def wait_ready(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                result = self._lines[-1] if self._lines else {}
                raise self._fail(f"exited before it was ready: {result.get('error', 'no result')}")
            if time.monotonic() > deadline:
                self.kill()
                raise self._fail(f"not ready after {timeout_s:.0f} s")
        assert self.ready_at is not None
        return self.ready_at

    def request_stop(self) -> None:
        """Write the stop line and close standard input."""
        if self.proc.stdin is None or self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def finish(self, timeout_s: float) -> Json:
        """Wait for the process to exit and return its result line (raises if it failed)."""
        if self.action != "work":
            self.request_stop()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._fail(f"did not finish within {timeout_s:.0f} s") from None
        self._reader.join(timeout=10)
        result = self._lines[-1] if self._lines else None
        if result is None:
            raise self._fail(f"exited with {self.proc.returncode} and no result line")
        if not result.get("ok"):
            raise self._fail(str(result.get("error", "failed")))
        self._stderr.close()
        return result

    def stop(self, timeout_s: float = 60.0) -> Json:
        self.request_stop()
        return self.finish(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
