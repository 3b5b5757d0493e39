"""pgqueue inside a FastAPI application's lifespan, served by a real uvicorn process.

A request enqueues a job in the application's transaction; the runtime, started by the lifespan
on uvicorn's own event loop, runs it; SIGINT shuts the server and the runtime down cleanly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.helpers import wait_until

pytestmark = [pytest.mark.system]

REPOSITORY = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def job_states(dsn: str, schema: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT id, state::text FROM {}").format(sql.Identifier(schema, "jobs")))
        return {int(job_id): str(state) for job_id, state in rows}


def producers(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "pgqueue_producers"))
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def server(dsn: str, schema: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    log = tmp_path / "uvicorn.log"
    env = {
        **os.environ,
        "PGQUEUE_TEST_DSN": dsn,
        "PGQUEUE_TEST_SCHEMA": schema,
        "PYTHONPATH": str(REPOSITORY),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.system.asgi_app:app",
                "--port",
                "0",
                "--log-level",
                "info",
            ],
            cwd=REPOSITORY,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        match = wait_until(
            lambda: process.poll() is None and _LISTENING.search(log.read_text(errors="replace")),
            timeout=30,
            message="uvicorn did not start",
        )
        assert isinstance(match, re.Match)
        yield process, f"http://127.0.0.1:{match.group(1)}", log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_request_enqueues_a_job_the_lifespan_runtime_runs_and_shutdown_is_clean(
    server: tuple[subprocess.Popen[bytes], str, Path], dsn: str, schema: str
) -> None:
    process, base, log = server
    with httpx.Client(base_url=base, timeout=10) as client:
        refused = client.post("/signups/1", params={"fail": "true"})
        assert refused.status_code == 409
        answer: dict[str, Any] = client.post("/signups/2").json()
    assert answer["runtime_started"] is True
    assert list(job_states(dsn, schema)) == [answer["job_id"]]  # the refused sign-up left no job
    wait_until(
        lambda: job_states(dsn, schema)[answer["job_id"]] == "completed",
        timeout=15,
        message="the job was not run",
    )
    assert producers(dsn, schema) == 1

    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    output = log.read_text(errors="replace")
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    assert producers(dsn, schema) == 0  # the runtime said goodbye as it stopped
