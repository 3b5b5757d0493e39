"""Helpers shared by the adapters; standard library only, importable as ``benchkit``.

The runner puts this directory on ``PYTHONPATH`` when it starts an adapter, so an adapter running in
its own environment (any Python >= 3.11) can ``import benchkit``. Nothing here is required by the
adapter contract (see ``benchmarks/README.md``); it only saves each adapter from re-implementing
the plumbing: reading the task, printing JSON lines, the stop signal, pacing and recording
executions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

Task = dict[str, Any]
Result = dict[str, Any]
Handler = Callable[[Task], Result]


def read_task() -> Task:
    """The task: the first command-line argument, else the first line of standard input."""
    raw = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.readline()
    task = json.loads(raw)
    if not isinstance(task, dict) or not isinstance(task.get("action"), str):
        raise ValueError("a task is a JSON object with an 'action'")
    return task


def emit(payload: Mapping[str, Any]) -> None:
    """Write one JSON line on standard output and flush it."""
    sys.stdout.write(json.dumps(payload, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(handlers: Mapping[str, Handler]) -> int:
    """Run the task's action and print its result line; return the exit code."""
    try:
        task = read_task()
        handler = handlers.get(task["action"])
        if handler is None:
            emit({"ok": False, "error": f"unknown action {task['action']!r}"})
            return 2
        result = handler(task)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"ok": True, **result})
    return 0


def python_version() -> str:
    return platform.python_version()


class Recorder:
    """Records each execution's sequence number and the time its perform started."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, float]] = []

    def record(self, seq: int) -> None:
        # list.append is atomic under the GIL, so threads may share one recorder.
        self.starts.append((seq, time.time()))

    def result(self, record_starts: bool) -> Result:
        times = [t for _, t in self.starts]
        out: Result = {
            "executions": [seq for seq, _ in self.starts],
            "first_start": min(times) if times else None,
            "last_start": max(times) if times else None,
        }
        if record_starts:
            out["starts"] = [[seq, t] for seq, t in self.starts]
        return out


def ready() -> None:
    """Tell the runner the worker is being handed control (the ``ready`` event line)."""
    emit({"event": "ready", "t": time.time()})


def wait_for_stop_line() -> None:
    """Block until the runner writes a line on standard input or closes it."""
    sys.stdin.readline()


async def wait_for_stop() -> None:
    """Async version of :func:`wait_for_stop_line`; a daemon thread does the blocking read."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not stopped.done():
            stopped.set_result(None)

    def watch() -> None:
        wait_for_stop_line()
        # RuntimeError: the loop is already closed, so nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=watch, name="benchkit-stop", daemon=True).start()
    await stopped


async def hold(worker: asyncio.Task[Any] | None = None) -> None:
    """Announce readiness and wait for the stop line; fail if ``worker`` ends before it."""
    ready()
    stop = asyncio.ensure_future(wait_for_stop())
    waiting: set[asyncio.Future[Any]] = {stop}
    if worker is not None:
        waiting.add(worker)
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if worker is not None and worker in done:
        stop.cancel()
        worker.result()
        raise RuntimeError("the worker stopped before it was asked to")


class Pacer:
    """Fixed-rate schedule without drift: ``delay()`` is how long to sleep before the next step."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        wait = max(0.0, self._next - now)
        self._next = max(self._next, now) + self.interval_s
        return wait


def sequence(task: Task) -> range:
    first = int(task.get("first_seq", 0))
    return range(first, first + int(task["count"]))


def enqueue_result(count: int, seconds: float, commits: Sequence[tuple[int, float]]) -> Result:
    out: Result = {"enqueued": count, "seconds": seconds}
    if commits:
        out["commits"] = [[seq, t] for seq, t in commits]
    return out


async def enqueue_async(
    task: Task,
    single: Callable[[int], Awaitable[object]],
    bulk: Mapping[str, Callable[[list[int]], Awaitable[object]]],
) -> Result:
    """Run an ``enqueue`` task with the adapter's own one-job and bulk calls.

    ``single`` inserts one job and returns once its transaction has committed. With
    ``interval_ms`` the inserts are paced and the time right after each commit is returned per
    sequence number (``commits``), for the pickup-latency workload.
    """
    seqs = sequence(task)
    mode = task["mode"]
    interval_s = float(task.get("interval_ms", 0)) / 1000
    commits: list[tuple[int, float]] = []
    started = time.perf_counter()
    if mode == "single":
        pacer = Pacer(interval_s)
        for seq in seqs:
            if interval_s:
                await asyncio.sleep(pacer.delay())
            await single(seq)
            if interval_s:
                commits.append((seq, time.time()))
    elif mode in bulk:
        await bulk[mode](list(seqs))
    else:
        raise ValueError(f"unknown enqueue mode {mode!r}")
    return enqueue_result(len(seqs), time.perf_counter() - started, commits)


def enqueue_sync(
    task: Task,
    single: Callable[[int], object],
    bulk: Mapping[str, Callable[[list[int]], object]],
) -> Result:
    """Blocking version of :func:`enqueue_async`."""
    seqs = sequence(task)
    mode = task["mode"]
    interval_s = float(task.get("interval_ms", 0)) / 1000
    commits: list[tuple[int, float]] = []
    started = time.perf_counter()
    if mode == "single":
        pacer = Pacer(interval_s)
        for seq in seqs:
            if interval_s:
                time.sleep(pacer.delay())
            single(seq)
            if interval_s:
                commits.append((seq, time.time()))
    elif mode in bulk:
        bulk[mode](list(seqs))
    else:
        raise ValueError(f"unknown enqueue mode {mode!r}")
    return enqueue_result(len(seqs), time.perf_counter() - started, commits)


def info(
    *,
    system: str,
    version: str,
    enqueue_modes: Sequence[Mapping[str, Any]],
    variants: Sequence[Mapping[str, Any]],
    latency_variant: str,
    done_sql: str,
    total_sql: str,
    notes: Sequence[str] = (),
) -> Result:
    """The ``info`` result, with the adapter's Python version filled in."""
    return {
        "system": system,
        "version": version,
        "python": python_version(),
        "enqueue_modes": list(enqueue_modes),
        "variants": list(variants),
        "latency_variant": latency_variant,
        "sql": {"done": done_sql, "total": total_sql},
        "notes": list(notes),
    }
