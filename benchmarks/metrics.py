"""What a measurement records: peak RSS and CPU of the measured processes, and summary statistics."""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


@dataclass
class ProcessSampler:
    """Samples the resident memory of some processes (and their children) from a thread.

    ``peak_rss`` is the largest sum seen at one sample; ``cpu_seconds`` the user+system time the
    processes had used at their last sample.
    """

    interval_s: float = 0.05
    peak_rss: int = 0
    _cpu: dict[int, float] = field(default_factory=dict)
    _pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, pid: int) -> None:
        with self._lock:
            self._pids.append(pid)
        self.sample()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
            self._thread.start()

    def _processes(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        with self._lock:
            pids = list(self._pids)
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs.append(proc)
                procs.extend(proc.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def sample(self) -> None:
        total = 0
        for proc in self._processes():
            try:
                with proc.oneshot():
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self._cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median, min and max of the values that are present (None when there are none)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies given in seconds, in milliseconds."""
    if not latencies_s:
        return {}
    ms = [v * 1000 for v in latencies_s]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "n": float(len(ms)),
    }


def check_executions(expected: int, executions: Sequence[int], done: int) -> dict[str, object]:
    """No job lost, none run twice: compares the executions the workers saw with what was enqueued."""
    distinct = len(set(executions))
    duplicates = len(executions) - distinct
    lost = expected - distinct
    return {
        "expected": expected,
        "executions": len(executions),
        "distinct": distinct,
        "duplicates": duplicates,
        "lost": lost,
        "done_in_db": done,
        "ok": duplicates == 0 and lost == 0 and done >= expected,
    }
