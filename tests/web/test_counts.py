"""Counts by queue and state at a bounded cost: exact within a state's bound, "≈" beyond it, and
read once per interval however many pages, polls and scrapes ask."""

from __future__ import annotations

import re
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from pgqueue.counts import COUNT_EXACT_UP_TO
from pgqueue.web import create_app
from pgqueue.web.recent import Recent
from tests.helpers import parse_metrics

from .conftest import TOKEN, insert_job


def _completed_jobs(conn: psycopg.Connection[Any], schema: str, queue: str, count: int) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (state, queue, worker, args, attempt, attempted_at, completed_at) "
            "SELECT 'completed', %s, 'tests.pgqueue.workers.Ok', '{{}}', 1, now(), now() "
            "FROM generate_series(1, %s)"
        ).format(sql.Identifier(schema, "jobs")),
        (queue, count),
    )
    conn.commit()


def test_a_finished_state_beyond_its_bound_is_estimated_not_counted(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given more completed jobs than the bound, a few discarded ones, and fresh statistics
    _completed_jobs(conn, schema, "alpha", COUNT_EXACT_UP_TO + 500)
    insert_job(conn, schema, "discarded")
    insert_job(conn, schema, "available")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "jobs")))

    app = create_app(dsn, schema=schema, token=TOKEN, counts_seconds=0)
    with TestClient(app, base_url="http://dash.test") as client:
        headers = {"authorization": f"Bearer {TOKEN}"}
        # When the live counts, the queues page and the scrape read them
        counts = client.get("/api/counts", headers=headers).json()
        page = client.get("/", headers=headers).text
        scrape = parse_metrics(client.get("/metrics", headers=headers).text)

    # Then completed is one estimated total, never below the bound, marked as such everywhere
    assert counts["estimated"] == ["completed"]
    assert COUNT_EXACT_UP_TO <= counts["totals"]["completed"] <= 2 * (COUNT_EXACT_UP_TO + 500)
    assert re.search(r'data-count="completed"[^>]*>≈ \d+<', page)
    assert scrape[("pgqueue_queue_jobs_estimated", (("state", "completed"),))] >= COUNT_EXACT_UP_TO
    assert ("pgqueue_queue_jobs", (("queue", "alpha"), ("state", "completed"))) not in scrape
    # And the states within their bound are still exact, per queue
    assert (counts["totals"]["discarded"], counts["totals"]["available"]) == (1, 1)
    assert scrape[("pgqueue_queue_jobs", (("queue", "alpha"), ("state", "discarded")))] == 1
    assert re.search(r'data-count="discarded">1<', page)


@pytest.mark.parametrize(("seconds", "second_total"), [(60.0, 1), (0.0, 2)])
def test_counts_are_shared_for_counts_seconds(
    dsn: str, schema: str, conn: psycopg.Connection[Any], seconds: float, second_total: int
) -> None:
    insert_job(conn, schema, "available")
    app = create_app(dsn, schema=schema, token=TOKEN, counts_seconds=seconds)
    with TestClient(app, base_url="http://dash.test") as client:
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/counts", headers=headers).json()["totals"] == {"available": 1}
        # When a job arrives between two polls
        insert_job(conn, schema, "available")
        # Then a poll within counts_seconds reuses the first count; with 0 it counts again
        assert client.get("/api/counts", headers=headers).json()["totals"] == {"available": second_total}


def test_counts_seconds_must_be_a_non_negative_number(dsn: str) -> None:
    for bad in (-1, "1", True):
        with pytest.raises(ValueError, match="counts_seconds"):
            create_app(dsn, token=TOKEN, counts_seconds=bad)  # type: ignore[arg-type]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_recent_reads_once_for_concurrent_callers_and_again_once_stale() -> None:
    clock = _Clock()
    reads = 0
    release = anyio.Event()

    async def read() -> int:
        nonlocal reads
        reads += 1
        await release.wait()
        return reads

    recent = Recent(read, 2.0, clock)
    results: list[int] = []

    async def get() -> None:
        results.append(await recent.get())

    # Given three callers arriving while the first read is in flight
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(get)
        await anyio.wait_all_tasks_blocked()
        release.set()
    # Then they all got that one read
    assert (reads, results) == (1, [1, 1, 1])
    # And within the interval it is reused, after it a new read happens
    clock.now += 1.9
    assert await recent.get() == 1
    clock.now += 0.2
    assert await recent.get() == 2


@pytest.mark.anyio
async def test_recent_with_zero_seconds_reads_every_time() -> None:
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        return reads

    recent = Recent(read, 0.0)
    assert [await recent.get() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="seconds must be 0 or more"):
        Recent(read, -1.0)
