"""``python -m pgqueue start --metrics-port``: a real node serves its metrics, scraped and parsed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import pgqueue
from tests.helpers import free_port, parse_metrics, wait_until
from tests.pgqueue.workers import Ok

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]


def test_a_node_serves_job_counts_durations_and_queue_gauges(
    dsn: str, schema: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pgqueue.insert_all(conn, [Ok.new({"n": n}) for n in range(3)], schema=schema)
    conn.commit()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    command = [
        sys.executable, "-m", "pgqueue", "start", "--dsn", dsn, "--schema", schema,
        "--queues", "alpha:2", "--workers", "tests.pgqueue.workers", "--metrics-port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    with (tmp_path / "node.log").open("wb") as log:
        node = subprocess.Popen(command, cwd=REPOSITORY, env=env, stderr=log)
    try:

        def scrape() -> dict[Any, float] | None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                return None
            samples = parse_metrics(text)
            done = samples.get(
                ("pgqueue_jobs_total", (("outcome", "success"), ("queue", "alpha"), ("worker", Ok.name)))
            )
            return samples if done == 3 else None

        samples = wait_until(scrape, timeout=30, interval=0.2)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    assert samples[("pgqueue_job_duration_seconds_count", (("outcome", "success"), ("queue", "alpha")))] == 3
    assert samples[("pgqueue_database_up", ())] == 1
    assert ("pgqueue_queue_jobs", (("queue", "alpha"), ("state", "available"))) not in samples or samples[
        ("pgqueue_queue_jobs", (("queue", "alpha"), ("state", "available")))
    ] == 0
