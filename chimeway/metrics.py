"""Prometheus metrics for Chimeway, through ``prometheus_client``.

* :class:`DeliveryMetrics` counts this process's recorded attempts from telemetry: by channel and
  outcome, and how long recording each took (the ``attempts.record`` span).
* :class:`DeliveryCollector` reads the database at scrape time: deliveries by channel and status.

``python -m chimeway.worker --metrics-port`` serves both with pgqueue's own metrics; the
dashboard's ``/metrics`` includes the collector when Chimeway's pages are added to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgqueue.lifecycle import describe_error
from pgqueue.metrics import ScrapeConnection

from . import telemetry
from .store import queries_for

__all__ = ["DeliveryCollector", "DeliveryMetrics"]

_log = logging.getLogger("chimeway.metrics")
_RECORD_STOP = ("chimeway", "attempts", "record", "stop")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class DeliveryMetrics:
    """Attempt counters and latency fed by Chimeway's telemetry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "chimeway_delivery_attempts",
            "Recorded delivery attempts, by channel and outcome.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "chimeway_attempt_record_seconds",
            "Time to record an attempt and move its delivery (row lock, insert, transition), by channel.",
            ["channel"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def attach(self) -> None:
        telemetry.attach(self.handle)

    def detach(self) -> None:
        telemetry.detach(self.handle)

    def handle(
        self, event: tuple[str, ...], measurements: Mapping[str, int | float], metadata: Mapping[str, Any]
    ) -> None:
        if event != _RECORD_STOP:
            return
        channel = str(metadata.get("channel") or "unknown")
        self.attempts.labels(channel, str(metadata.get("outcome") or "unknown")).inc()
        # chimeway's durations are in nanoseconds
        self.latency.labels(channel).observe(float(measurements.get("duration", 0)) / 1e9)


class DeliveryCollector(Collector):
    """``chimeway_deliveries{channel, status}`` read at each scrape; a failed read is logged.
    Scrapes less than ``cache_seconds`` apart (the dashboard passes its ``counts_seconds``) share
    one read."""

    def __init__(self, dsn: str, schema: str = "public", cache_seconds: float = 0.0) -> None:
        self.dsn = dsn
        self.queries = queries_for(schema)
        self._connection = ScrapeConnection(dsn, cache_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chimeway_deliveries",
            "Deliveries in the table, by channel and status.",
            labels=["channel", "status"],
        )
        try:
            (rows,) = self._connection.fetch([(self.queries.web_delivery_counts, {})])
        except psycopg.Error as exc:
            _log.warning("chimeway metrics: cannot read deliveries (%s)", describe_error(exc, self.dsn))
            return
        for channel, status, count in rows:
            family.add_metric([channel, status], count)
        yield family
