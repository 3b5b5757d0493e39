"""The dashboard's pages and actions over HTTP, against a real PostgreSQL (in-process ASGI)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from starlette.testclient import TestClient

import pgqueue
from pgqueue.web import create_app

from .conftest import TOKEN, csrf_of, insert_job, state_of


def test_queues_page_shows_counts_per_queue_and_state(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    insert_job(conn, schema, "available")
    insert_job(conn, schema, "available")
    insert_job(conn, schema, "discarded")

    page = client.get("/")

    assert page.status_code == 200
    row = re.search(r'<tr data-queue="alpha">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert '?queue=alpha&amp;state=available">2</a>' in row.group(1)
    assert '?queue=alpha&amp;state=discarded">1</a>' in row.group(1)
    assert client.get("/api/counts").json()["totals"] == {"available": 2, "discarded": 1}


def test_jobs_are_paged_by_keyset_newest_first(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    ids = [insert_job(conn, schema, "available").id for _ in range(30)]

    first = client.get("/jobs?state=available&limit=25")
    shown = [int(i) for i in re.findall(r'data-job-id="(\d+)"', first.text)]
    assert shown == sorted(ids, reverse=True)[:25]
    older = re.search(r'rel="next" href="[^"]*before=(\d+)', first.text)
    assert older is not None
    assert int(older.group(1)) == shown[-1]

    second = client.get(f"/jobs?state=available&limit=25&before={older.group(1)}")
    assert [int(i) for i in re.findall(r'data-job-id="(\d+)"', second.text)] == sorted(ids, reverse=True)[25:]
    newer = re.search(r'rel="prev" href="[^"]*after=(\d+)', second.text)
    assert newer is not None
    back = client.get(f"/jobs?state=available&limit=25&after={newer.group(1)}")
    assert [int(i) for i in re.findall(r'data-job-id="(\d+)"', back.text)] == shown


def test_jobs_filter_by_tags_and_args(client: TestClient, conn: psycopg.Connection[Any], schema: str) -> None:
    wanted = insert_job(conn, schema, "available", args={"user_id": 7}, tags=["vip"])
    insert_job(conn, schema, "available", args={"user_id": 8}, tags=["vip"])
    insert_job(conn, schema, "available", args={"user_id": 7})

    page = client.get(
        "/jobs", params={"tags": "vip", "args": '{"user_id": 7}', "worker": "tests.pgqueue.workers.Ok"}
    )

    assert [int(i) for i in re.findall(r'data-job-id="(\d+)"', page.text)] == [wanted.id]


def test_job_detail_shows_errors_timeline_and_redacted_args(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    errors = '[{"attempt": 1, "at": "2026-01-01T00:00:00+00:00", "error": "Traceback: boom"}]'
    job = insert_job(conn, schema, "retryable", args={"to": "x", "api_token": "s3cr3t"}, errors=errors)

    page = client.get(f"/jobs/{job.id}")

    assert page.status_code == 200
    assert "Traceback: boom" in page.text
    assert "attempt 1 failed" in page.text
    assert "s3cr3t" not in page.text
    assert "api_token" not in page.text
    assert "&#34;to&#34;" in page.text or '"to"' in page.text


def test_unknown_job_is_a_404_page(client: TestClient) -> None:
    for path in ("/jobs/999999999", "/jobs/99999999999999999999999", "/jobs/abc"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text


def test_bad_filters_are_a_clear_400(client: TestClient) -> None:
    response = client.get("/jobs", params={"queue": "x'; DROP TABLE jobs; --"})
    assert response.status_code == 400
    assert "queue: may hold only" in response.text
    assert "Traceback" not in response.text
    assert client.get("/jobs", params={"args": "[1"}).status_code == 400
    assert client.get("/jobs", params={"state": "exploded"}).status_code == 400
    status, body = call_asgi(client.app, b"queue=" + b"a" * 10_000_000)
    assert status == 400
    assert b"query string over" in body
    assert b"Traceback" not in body


def call_asgi(app: Any, query_string: bytes) -> tuple[int, bytes]:
    """One GET /jobs straight into the ASGI app (an HTTP client won't send a 10 MB URL)."""
    import anyio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/jobs",
        "raw_path": b"/jobs",
        "root_path": "",
        "query_string": query_string,
        "headers": [(b"host", b"dash.test")],
        "scheme": "http",
        "http_version": "1.1",
        "client": ("127.0.0.1", 1),
        "server": ("dash.test", 80),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_retry_asks_for_confirmation_then_applies_once(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    job = insert_job(conn, schema, "discarded")
    csrf = csrf_of(client)

    confirm = client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf, "state": "discarded"})
    assert confirm.status_code == 200
    assert "Yes, retry" in confirm.text
    assert state_of(conn, schema, job.id) == "discarded"

    done = client.post(
        f"/jobs/{job.id}/retry",
        data={"csrf": csrf, "state": "discarded", "confirmed": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert "notice=retried" in done.headers["location"]
    assert state_of(conn, schema, job.id) == "available"

    again = client.post(
        f"/jobs/{job.id}/retry", data={"csrf": csrf, "state": "discarded", "confirmed": "yes"}
    )
    assert "Nothing was done: the job is available now" in again.text


def test_bulk_cancel_changes_only_jobs_still_in_the_shown_state(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    first = insert_job(conn, schema, "scheduled")
    second = insert_job(conn, schema, "scheduled")
    moved = insert_job(conn, schema, "completed")
    data = {"csrf": csrf_of(client), "state": "scheduled", "action": "cancel", "confirmed": "yes"}

    response = client.post("/jobs/bulk", data={**data, "ids": [str(first.id), str(second.id), str(moved.id)]})

    assert "2 job(s) changed" in response.text
    assert [state_of(conn, schema, j.id) for j in (first, second, moved)] == [
        "cancelled",
        "cancelled",
        "completed",
    ]


def test_delete_removes_the_row(client: TestClient, conn: psycopg.Connection[Any], schema: str) -> None:
    job = insert_job(conn, schema, "completed")
    data = {"csrf": csrf_of(client), "state": "completed", "confirmed": "yes"}
    assert "Deleted." in client.post(f"/jobs/{job.id}/delete", data=data).text
    assert state_of(conn, schema, job.id) is None


def test_pause_writes_a_signal_row(client: TestClient, conn: psycopg.Connection[Any], schema: str) -> None:
    response = client.post("/queues/alpha/pause", data={"csrf": csrf_of(client)})
    assert "Pause sent" in response.text
    rows = conn.execute(f'SELECT action, queue FROM "{schema}".pgqueue_signals').fetchall()
    assert rows == [("pause", "alpha")]


def test_a_post_without_the_csrf_token_is_refused(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    job = insert_job(conn, schema, "discarded")
    data = {"state": "discarded", "confirmed": "yes"}
    assert client.post(f"/jobs/{job.id}/retry", data=data).status_code == 403
    assert client.post(f"/jobs/{job.id}/retry", data={**data, "csrf": "0" * 64}).status_code == 403
    cross = client.post(
        f"/jobs/{job.id}/retry",
        data={**data, "csrf": csrf_of(client)},
        headers={"origin": "http://evil.test"},
    )
    assert cross.status_code == 403
    assert state_of(conn, schema, job.id) == "discarded"


def test_authentication_is_required_and_a_wrong_token_gets_a_bare_401(dsn: str, schema: str) -> None:
    app = create_app(dsn, schema=schema, token=TOKEN)
    with TestClient(app, base_url="http://dash.test") as anonymous:
        assert anonymous.get("/api/counts").status_code == 401
        page = anonymous.get("/jobs", headers={"accept": "text/html"})
        assert page.status_code == 401
        assert "Sign in" in page.text
        assert "alpha" not in page.text
        wrong = anonymous.get("/api/counts", headers={"authorization": "Bearer wrong-token-0123456789"})
        assert (wrong.status_code, wrong.text) == (401, "Unauthorized")
        assert anonymous.post("/login", data={"secret": "nope"}).status_code == 401
        assert anonymous.get("/api/counts", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_basic_auth_and_a_pluggable_callable(dsn: str, schema: str) -> None:
    with TestClient(create_app(dsn, schema=schema, basic_auth="ops:pa55word")) as basic:
        assert basic.get("/api/counts", auth=("ops", "pa55word")).status_code == 200
        assert basic.get("/api/counts", auth=("ops", "wrong")).status_code == 401

    def staff_only(conn: Any) -> str | None:
        return "alice" if conn.headers.get("x-staff") == "yes" else None

    with TestClient(create_app(dsn, schema=schema, authenticate=staff_only)) as mounted:
        assert mounted.get("/api/counts").status_code == 401
        assert mounted.get("/", headers={"x-staff": "yes"}).status_code == 200


def test_the_dashboard_refuses_to_start_without_authentication(dsn: str, schema: str) -> None:
    import pytest

    from pgqueue.errors import ConfigError

    with pytest.raises(ConfigError, match="requires authentication"):
        create_app(dsn, schema=schema)
    with pytest.raises(ConfigError, match="token must be at least 16"):
        create_app(dsn, schema=schema, token="short")


def test_read_only_mode_hides_and_refuses_actions(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    job = insert_job(conn, schema, "discarded")
    with TestClient(
        create_app(dsn, schema=schema, token=TOKEN, read_only=True), base_url="http://dash.test"
    ) as c:
        c.post("/login", data={"secret": TOKEN})
        page = c.get(f"/jobs/{job.id}")
        assert page.status_code == 200
        assert 'id="retry"' not in page.text
        data = {"csrf": csrf_of(c), "state": "discarded", "confirmed": "yes"}
        assert c.post(f"/jobs/{job.id}/retry", data=data).status_code == 403
    assert state_of(conn, schema, job.id) == "discarded"


def test_nodes_page_lists_producers_and_the_leader(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    conn.execute(
        f"""INSERT INTO "{schema}".pgqueue_producers (uuid, node, queue, meta)
            VALUES (gen_random_uuid(), 'node-a', 'alpha', '{{"limit": 5, "paused": true, "running": 2}}')"""
    )
    conn.execute(
        f"""INSERT INTO "{schema}".pgqueue_leaders (name, node, expires_at)
            VALUES ('pgqueue', 'node-a', now() + interval '1 minute')"""
    )
    conn.commit()
    page = client.get("/nodes")
    assert 'data-node="node-a"' in page.text
    assert "leader" in page.text
    queues = client.get("/")
    assert "node-a · 5 · 2 · paused" in queues.text


def test_mounted_under_a_prefix_every_link_and_the_cookie_carry_it(dsn: str, schema: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/ops/queue", create_app(dsn, schema=schema, token=TOKEN))])
    with TestClient(host, base_url="http://dash.test") as client:
        login = client.post("/ops/queue/login", data={"secret": TOKEN}, follow_redirects=False)
        assert login.headers["location"] == "/ops/queue/"
        assert "Path=/ops/queue/" in login.headers["set-cookie"]
        page = client.get("/ops/queue/jobs")
        assert page.status_code == 200
        assert 'href="/ops/queue/static/app.css"' in page.text
        assert 'action="/ops/queue/jobs"' in page.text


def test_metrics_endpoint_scrapes_cleanly_and_needs_auth(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.helpers import parse_metrics

    insert_job(conn, schema, "available", scheduled_at=datetime.now(UTC) - timedelta(seconds=90))
    insert_job(conn, schema, "available")
    insert_job(conn, schema, "executing", attempted_by=["node-x", "p-1"])

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    scrape = parse_metrics(response.text)
    assert scrape[("pgqueue_queue_jobs", (("queue", "alpha"), ("state", "available")))] == 2
    assert scrape[("pgqueue_executing_jobs", (("node", "node-x"), ("queue", "alpha")))] == 1
    assert 89 <= scrape[("pgqueue_oldest_available_age_seconds", (("queue", "alpha"),))] < 3600
    assert scrape[("pgqueue_database_up", ())] == 1
    client.cookies.clear()
    assert client.get("/metrics").status_code == 401


class Batched(pgqueue.Worker, queue="alpha"):
    def perform(self, job: pgqueue.Job) -> None:
        return None


def test_batches_page_shows_each_batch_with_its_progress(
    client: TestClient, conn: psycopg.Connection[Any], schema: str
) -> None:
    empty = client.get("/batches")
    assert "No batch yet." in empty.text
    batch = pgqueue.insert_batch(conn, [Batched.new({"n": n}) for n in range(3)], schema=schema)
    conn.execute(
        f"""UPDATE "{schema}".pgqueue_batches SET completed = 1, discarded = 1 WHERE id = %s""", [batch.id]
    )
    conn.commit()
    page = client.get("/batches")
    assert page.status_code == 200
    row = page.text.split(f'data-batch="{batch.id}"', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)[:6]
    assert cells == [str(batch.id), "3", "1", "1", "0", "1"]
    assert "running" in row
