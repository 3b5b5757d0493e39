"""A waiting workflow step shows what it waits for on the dashboard, never its parked date (9999)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from starlette.testclient import TestClient

import pgqueue
from tests.pgqueue.workers import Ok


def _cell(page: str, job_id: int) -> str:
    row = re.search(rf'<tr data-job-id="{job_id}"[^>]*>(.*?)</tr>', page, re.S)
    assert row is not None, f"job {job_id} not on the page"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    return cells[-2].strip()  # the scheduled column, before attempted


def test_jobs_page_shows_what_waiting_steps_wait_for(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    later = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    flow = pgqueue.Workflow("shown")
    a = flow.add("a", Ok.new({}))
    b = flow.add("b", Ok.new({}))
    flow.add("join", Ok.new({}), deps=[a, b])
    flow.add("approve", Ok.new({}), deps=[a], wait_for_signal="approved:7")
    flow.add("timed", Ok.new({}), wait_for_signal="go", signal_timeout=3600)
    flow.add("late", Ok.new({}), deps=[a], not_before=later)
    jobs = pgqueue.insert_workflow(conn, flow, schema=schema)
    plain = pgqueue.insert(conn, Ok.new({}, schedule_in=600), schema=schema)
    conn.commit()

    page = client.get("/jobs?state=scheduled").text

    assert "9999" not in page
    assert _cell(page, jobs["join"].id) == "waiting on 2 dependencies"
    assert _cell(page, jobs["approve"].id) == "waiting on 1 dependency · signal approved:7"
    timed = _cell(page, jobs["timed"].id)
    assert timed.startswith("waiting signal go (until "), timed
    assert _cell(page, jobs["late"].id) == "waiting on 1 dependency · not before 2031-01-02 03:04:05 UTC"
    scheduled = datetime.now(UTC) + timedelta(seconds=600)
    assert str(scheduled.year) in _cell(page, plain.id), "a job scheduled by time still shows its time"


def test_job_page_shows_what_a_waiting_step_waits_for(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    flow = pgqueue.Workflow()
    first = flow.add("first", Ok.new({}))
    flow.add("publish", Ok.new({}), deps=[first], wait_for_signal="approved")
    publish = pgqueue.insert_workflow(conn, flow, schema=schema)["publish"]
    conn.commit()

    page = client.get(f"/jobs/{publish.id}").text

    waiting = re.search(r'<dd id="job-waiting">(.*?)</dd>', page)
    assert waiting is not None
    assert waiting.group(1) == "waiting on 1 dependency · signal approved"
    assert "9999" not in page
