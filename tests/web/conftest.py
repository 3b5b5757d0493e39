"""Fixtures for the dashboard: the app on the test's schema, served in-process or by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

import pgqueue
from pgqueue.web import create_app
from tests.pgqueue.workers import Ok

TOKEN = "test-token-0123456789abcdef"


def insert_job(
    conn: psycopg.Connection[Any], schema: str, state: str = "available", **columns: Any
) -> pgqueue.Job:
    """A job of ``Ok`` moved to ``state`` (and any other columns) by hand."""
    args = columns.pop("args", {"n": 1})
    job = pgqueue.insert(conn, Ok.new(args, tags=columns.pop("tags", [])), schema=schema)
    values = {"state": state, **columns}
    if state in ("executing", "completed", "discarded", "retryable", "cancelled"):
        values.setdefault("attempt", 1)
    if state == "discarded":
        values.setdefault("max_attempts", 1)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in values.items()
    )
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE id = %s").format(sql.Identifier(schema, "jobs"), assignments),
        (job.id,),
    )
    conn.commit()
    return job


def state_of(conn: psycopg.Connection[Any], schema: str, job_id: int) -> str | None:
    row = conn.execute(
        sql.SQL("SELECT state::text FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")), (job_id,)
    ).fetchone()
    conn.commit()
    return row[0] if row else None


@pytest.fixture
def client(dsn: str, schema: str) -> Iterator[TestClient]:
    """A signed-in client of the dashboard (token auth) on the test's schema."""
    app = create_app(dsn, schema=schema, token=TOKEN)
    with TestClient(app, base_url="http://dash.test") as test_client:
        response = test_client.post("/login", data={"secret": TOKEN}, follow_redirects=False)
        assert response.status_code == 303
        yield test_client


def csrf_of(client: TestClient) -> str:
    page = client.get("/", headers={"accept": "text/html"})
    marker = 'name="csrf" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]
