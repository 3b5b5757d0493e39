"""Prometheus metrics for a queue, through ``prometheus_client``.

Two sources, one registry:

* :class:`JobMetrics` counts what this process does, from telemetry events: finished attempts
  by queue, worker and outcome, their duration, the attempt a job finished on, errors by
  exception class, and jobs the lifeline rescued.
* :class:`QueueCollector` reads the database at scrape time, in one statement: jobs by queue and
  state (exact up to a bound per state, estimated beyond, see :mod:`pgqueue.counts`), executing
  jobs by queue and node, and the age of each queue's oldest available job. Given a
  ``cache_seconds``, scrapes closer together than that share one read.

:func:`registry` builds both into a fresh ``CollectorRegistry``; :func:`serve` exposes one on a
port (``python -m pgqueue start --metrics-port``), and the dashboard serves ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import telemetry
from .counts import COUNT_EXACT_UP_TO, LIVE_COUNT_EXACT_UP_TO, count_params
from .lifecycle import describe_error
from .store import queries_for

__all__ = ["JobMetrics", "QueueCollector", "ScrapeConnection", "registry", "serve"]

_log = logging.getLogger("pgqueue.metrics")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_ATTEMPT_BUCKETS = (1, 2, 3, 5, 10, 20, 50)


class JobMetrics:
    """Counters and histograms fed by this process's job and plugin telemetry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "pgqueue_jobs",
            "Finished job attempts, by queue, worker and outcome.",
            ["queue", "worker", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "pgqueue_job_duration_seconds",
            "Time spent performing a job attempt, by queue and outcome.",
            ["queue", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.attempt = Histogram(
            "pgqueue_job_attempt",
            "The attempt number each finished attempt was, by queue.",
            ["queue"],
            buckets=_ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "pgqueue_job_errors",
            "Job attempts that raised, by queue and exception class.",
            ["queue", "error"],
            registry=registry,
        )
        self.rescued = Counter(
            "pgqueue_jobs_rescued",
            "Jobs the lifeline took back from dead nodes, by what became of them.",
            ["to"],
            registry=registry,
        )

    def attach(self, handler_id: str = "pgqueue-prometheus") -> None:
        telemetry.attach(handler_id, self.handle, [("job", "stop"), ("job", "exception"), ("plugin", "stop")])

    def handle(
        self, event: tuple[str, ...], measurements: Mapping[str, float], metadata: Mapping[str, Any]
    ) -> None:
        if event == ("plugin", "stop"):
            if metadata.get("plugin") == "lifeline":
                self.rescued.labels("available").inc(len(metadata.get("rescued_jobs") or ()))
                self.rescued.labels("discarded").inc(len(metadata.get("discarded_jobs") or ()))
            return
        queue, outcome = str(metadata.get("queue")), str(metadata.get("outcome"))
        self.jobs.labels(queue, str(metadata.get("worker")), outcome).inc()
        self.duration.labels(queue, outcome).observe(float(measurements.get("duration", 0.0)))
        attempt = metadata.get("attempt")
        if isinstance(attempt, int):
            self.attempt.labels(queue).observe(attempt)
        if event == ("job", "exception"):
            error = metadata.get("error")
            self.errors.labels(queue, type(error).__name__ if error is not None else "unknown").inc()


class ScrapeConnection:
    """One connection kept between scrapes: opened on first use, reopened after an error.

    The same statements fetched again less than ``cache_seconds`` later return the last rows:
    scrapes close together (several Prometheus servers, a page refreshed by hand) count once."""

    def __init__(self, dsn: str, cache_seconds: float = 0.0) -> None:
        self.dsn = dsn
        self.cache_seconds = cache_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._last: tuple[float, Any, list[list[tuple[Any, ...]]]] | None = None

    def fetch(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """The rows of each statement, in order (autocommit: each reads its own snapshot)."""
        key = [(statement, dict(params)) for statement, params in statements]
        with self._lock:
            last = self._last
            if last is not None and last[1] == key and time.monotonic() - last[0] < self.cache_seconds:
                return last[2]
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, connect_timeout=5, autocommit=True)
            started = time.monotonic()
            try:
                rows = [self._conn.execute(statement, params).fetchall() for statement, params in statements]
            except psycopg.Error:
                self._conn.close()
                self._conn = None
                raise
            self._last = (started, key, rows)
            return rows


class QueueCollector(Collector):
    """Gauges read from the database at each scrape; a failed read is logged, not raised.

    Scrapes less than ``cache_seconds`` apart (the dashboard's ``/metrics`` passes its
    ``counts_seconds``) reuse the last read rather than counting again; by default every scrape
    reads, so the gauges agree with the counters served beside them."""

    def __init__(self, dsn: str, schema: str = "public", cache_seconds: float = 0.0) -> None:
        self.dsn = dsn
        self.queries = queries_for(schema)
        self._connection = ScrapeConnection(dsn, cache_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "pgqueue_queue_jobs",
            "Jobs in the table, by queue and state (states within their bound for an exact count).",
            labels=["queue", "state"],
        )
        estimated = GaugeMetricFamily(
            "pgqueue_queue_jobs_estimated",
            f"Jobs of a state too large to count exactly (over {COUNT_EXACT_UP_TO} finished or "
            f"{LIVE_COUNT_EXACT_UP_TO} unfinished jobs), estimated from the planner's statistics.",
            labels=["state"],
        )
        executing = GaugeMetricFamily(
            "pgqueue_executing_jobs", "Jobs executing now, by queue and node.", labels=["queue", "node"]
        )
        oldest = GaugeMetricFamily(
            "pgqueue_oldest_available_age_seconds",
            "Seconds the oldest available job of each queue has been due.",
            labels=["queue"],
        )
        up = GaugeMetricFamily("pgqueue_database_up", "Whether the last scrape could read the database.")
        try:
            (rows,) = self._connection.fetch([(self.queries.metrics_queue, count_params())])
        except psycopg.Error as exc:
            _log.warning("pgqueue metrics: cannot read the queue (%s)", describe_error(exc, self.dsn))
            up.add_metric([], 0)
            yield up
            return
        for kind, queue, label, value in rows:
            if kind == "jobs" and queue is None:
                estimated.add_metric([label], value)
            elif kind == "jobs":
                jobs.add_metric([queue, label], value)
            elif kind == "executing":
                executing.add_metric([queue, label], value)
            elif kind == "oldest" and value is not None:
                oldest.add_metric([queue], max(float(value), 0.0))
        up.add_metric([], 1)
        yield from (jobs, estimated, executing, oldest, up)


def registry(
    dsn: str | None, schema: str = "public", *, attach: bool = True
) -> tuple[CollectorRegistry, JobMetrics]:
    """A fresh registry with this process's job metrics (attached to telemetry unless told not to)
    and, given a ``dsn``, the database gauges."""
    reg = CollectorRegistry()
    job_metrics = JobMetrics(reg)
    if attach:
        job_metrics.attach()
    if dsn is not None:
        reg.register(QueueCollector(dsn, schema))
    return reg, job_metrics


def serve(reg: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``reg`` at ``http://host:port/metrics`` from a daemon thread."""
    start_http_server(port, addr=host, registry=reg)
