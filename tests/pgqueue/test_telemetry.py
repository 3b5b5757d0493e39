"""Telemetry: job events around every attempt, a JSON log line per job, Prometheus counters."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from pgqueue import telemetry
from pgqueue.testing import perform_job

from .workers import Outcomes

Captured = list[tuple[tuple[str, ...], Mapping[str, float], Mapping[str, Any]]]


@pytest.fixture
def captured() -> Any:
    events: Captured = []
    telemetry.attach("test-capture", lambda e, m, meta: events.append((e, m, meta)))
    yield events
    telemetry.detach("test-capture")


def test_every_attempt_emits_start_then_stop_or_exception(captured: Captured) -> None:
    perform_job(Outcomes, {"action": "ok"})
    perform_job(Outcomes, {"action": "error"})
    names = [e for e, _, _ in captured if e[0] == "job"]
    assert names == [("job", "start"), ("job", "stop"), ("job", "start"), ("job", "exception")]
    stop = next(meta for e, _, meta in captured if e == ("job", "stop"))
    assert (stop["state"], stop["outcome"], stop["worker"]) == ("completed", "success", Outcomes.name)
    assert all(m["duration"] >= 0 for e, m, _ in captured if e[1] in ("stop", "exception"))


def test_a_failing_handler_is_detached_and_jobs_keep_running(captured: Captured) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("broken", broken)
    assert perform_job(Outcomes, {"action": "ok"}) is None
    assert perform_job(Outcomes, {"action": "ok"}) is None
    assert len([e for e, _, _ in captured if e == ("job", "stop")]) == 2


def test_the_default_logger_writes_one_json_line_per_attempt_without_args(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry.attach_default_logger()
    try:
        with caplog.at_level(logging.INFO, logger="pgqueue.jobs"):
            perform_job(Outcomes, {"action": "ok", "email": "someone@example.com"})
    finally:
        telemetry.detach("pgqueue-default-logger")
    (record,) = caplog.records
    line = json.loads(telemetry.JsonFormatter().format(record))
    assert (line["event"], line["outcome"], line["worker"]) == ("job.stop", "success", Outcomes.name)
    assert "someone@example.com" not in json.dumps(line)


def test_job_metrics_count_attempts_durations_and_errors_in_prometheus_format() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pgqueue.metrics import registry

    reg, job_metrics = registry(None, attach=False)
    job_metrics.attach("test-metrics")
    try:
        perform_job(Outcomes, {"action": "ok"})
        perform_job(Outcomes, {"action": "cancel"})
        # what the executor emits when perform raises (perform_job re-raises before emitting)
        telemetry.emit(
            ("job", "exception"),
            {"duration": 0.25},
            {
                "queue": "alpha",
                "worker": Outcomes.name,
                "attempt": 2,
                "outcome": "failure",
                "error": RuntimeError(),
            },
        )
        telemetry.emit(("plugin", "stop"), {"duration": 0.1}, {"plugin": "lifeline", "rescued_jobs": [1, 2]})
    finally:
        telemetry.detach("test-metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(reg).decode())
        for s in family.samples
    }
    worker = ("worker", Outcomes.name)
    assert samples[("pgqueue_jobs_total", (("outcome", "success"), ("queue", "alpha"), worker))] == 1
    assert samples[("pgqueue_jobs_total", (("outcome", "cancelled"), ("queue", "alpha"), worker))] == 1
    assert samples[("pgqueue_job_errors_total", (("error", "RuntimeError"), ("queue", "alpha")))] == 1
    assert samples[("pgqueue_job_duration_seconds_count", (("outcome", "success"), ("queue", "alpha")))] == 1
    assert samples[("pgqueue_job_attempt_count", (("queue", "alpha"),))] == 3
    assert samples[("pgqueue_jobs_rescued_total", (("to", "available"),))] == 2
