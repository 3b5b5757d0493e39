"""The dashboard in a real browser: ``python -m pgqueue web`` and ``python -m pgqueue start`` as
processes, Debian's Chromium driven by Playwright, PostgreSQL read back for every claim.

Chromium comes from the system (``apt-get install chromium``; ``.ci/run`` installs it); Playwright
launches it by path and never downloads a browser. ``PGQUEUE_TEST_CHROMIUM`` names another binary.
Set ``PGQUEUE_SCREENSHOTS`` to a directory to write the README's screenshots there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from psycopg import sql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries
from chimeway.deliveries import AttemptOutcome
from chimeway.models import Event, Notification
from tests.helpers import wait_until
from tests.pgqueue.workers import Sleepy
from tests.web.conftest import insert_job, state_of

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PGQUEUE_TEST_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {**os.environ, "PGQUEUE_WEB_TOKEN": TOKEN}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    env.pop("DATABASE_URL", None)
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def dashboard(dsn: str, schema: str, tmp_path: Path) -> Iterator[str]:
    """``python -m pgqueue web`` with the Chimeway pages, on a free port; its base URL."""
    port = _free_port()
    command = [
        sys.executable, "-m", "pgqueue", "web", "--dsn", dsn, "--schema", schema,
        "--port", str(port), "--extension", "chimeway.web:extension", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / "web.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=_env(), stderr=stderr)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            return httpx.get(f"{base}/login", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, interval=0.1, message="the dashboard did not start")
        yield base
    finally:
        _stop(process)


@pytest.fixture
def worker_node(dsn: str, schema: str, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts ``python -m pgqueue start`` running queue ``alpha`` with the pgqueue test workers."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "pgqueue", "start", "--dsn", dsn, "--schema", schema,
            "--queues", "alpha:2", "--workers", "tests.pgqueue.workers", "--node", "browser-node",
            "--heartbeat-interval", "0.3", "--rescue-window", "5", "--shutdown-grace", "1",
            "--log-level", "warning",
        ]  # fmt: skip
        with (tmp_path / "node.log").open("wb") as stderr:
            process = subprocess.Popen(command, cwd=REPOSITORY, env=_env(), stderr=stderr)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            _stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def sign_in(page: Page, base: str) -> None:
    response = page.goto(f"{base}/")
    assert response is not None
    assert response.status == 401
    page.fill("input[name=secret]", TOKEN)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{base}/")


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("PGQUEUE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 1000


def test_sign_in_filter_open_a_job_and_retry_it(
    dashboard: str, context: BrowserContext, conn: psycopg.Connection[Any], schema: str, tmp_path: Path
) -> None:
    error = {
        "attempt": 1,
        "at": "2026-01-01T00:00:00+00:00",
        "error": "Traceback (most recent call last):\n  boom",
    }
    errors = json.dumps([error])
    wanted = insert_job(conn, schema, "discarded", args={"order": 42}, tags=["web"], errors=errors)
    insert_job(conn, schema, "discarded", args={"order": 43})
    for _ in range(120):
        insert_job(conn, schema, "completed")
    # spread their finishes over the last hour, so the chart has something to draw
    conn.execute(
        sql.SQL(
            "UPDATE {} SET completed_at = now() - (id % 60) * interval '1 minute', "
            "attempted_at = now() - (id % 60) * interval '1 minute' - (id % 7 + 1) * interval '40 ms' "
            "WHERE state = 'completed'"
        ).format(sql.Identifier(schema, "jobs"))
    )
    conn.commit()
    page = context.new_page()

    sign_in(page, dashboard)
    assert page.inner_text("figure.chart figcaption").startswith("120 completed, 0 discarded")
    screenshot(page, "queues", tmp_path)
    page.click("header nav >> text=Jobs")
    page.click("nav.states >> text=discarded")
    page.fill("input[name=tags]", "web")
    page.click("#filters button[type=submit]")
    rows = page.locator("tr[data-job-id]")
    rows.first.wait_for()
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(rows.count())] == [str(wanted.id)]
    page.fill("input[name=tags]", "")
    page.click("#filters button[type=submit]")
    screenshot(page, "jobs", tmp_path)
    page.click(f"tr[data-job-id='{wanted.id}'] a")
    page.wait_for_url(f"{dashboard}/jobs/{wanted.id}")
    assert "boom" in page.inner_text("details.error-entry pre")
    screenshot(page, "job", tmp_path)

    page.click("button#retry")
    page.click("button#confirm")

    page.locator("p.notice").wait_for()
    assert "Retried" in page.inner_text("p.notice")
    assert state_of(conn, schema, wanted.id) == "available"
    assert page.inner_text("#job-state") == "available"


def test_cancel_a_job_running_on_a_worker_process(
    dashboard: str,
    context: BrowserContext,
    worker_node: Callable[[], subprocess.Popen[bytes]],
    conn: psycopg.Connection[Any],
    schema: str,
    tmp_path: Path,
) -> None:
    job = pgqueue.insert(conn, Sleepy.new({"seconds": 120}), schema=schema)
    conn.commit()
    worker_node()
    wait_until(lambda: state_of(conn, schema, job.id) == "executing", timeout=30, interval=0.1)
    page = context.new_page()
    sign_in(page, dashboard)
    page.goto(f"{dashboard}/nodes")
    page.locator("tr[data-node='browser-node']").first.wait_for()
    screenshot(page, "nodes", tmp_path)

    page.goto(f"{dashboard}/jobs/{job.id}")
    page.click("button#cancel")
    page.click("button#confirm")

    page.locator("p.notice").wait_for()
    assert state_of(conn, schema, job.id) == "cancelled"

    def stopped_on_the_node() -> bool:
        row = conn.execute(
            sql.SQL("SELECT meta->>'running' FROM {} WHERE queue = 'alpha'").format(
                sql.Identifier(schema, "pgqueue_producers")
            )
        ).fetchone()
        conn.commit()
        return row is not None and row[0] == "0"

    wait_until(stopped_on_the_node, timeout=20, interval=0.1, message="the node kept running the job")
    assert state_of(conn, schema, job.id) == "cancelled"


def test_pause_a_queue_from_the_queues_page(
    dashboard: str,
    context: BrowserContext,
    worker_node: Callable[[], subprocess.Popen[bytes]],
    conn: psycopg.Connection[Any],
    schema: str,
) -> None:
    worker_node()
    producers = sql.SQL("SELECT meta->>'paused' FROM {} WHERE queue = 'alpha'").format(
        sql.Identifier(schema, "pgqueue_producers")
    )

    def paused() -> str | None:
        row = conn.execute(producers).fetchone()
        conn.commit()
        return row[0] if row else None

    wait_until(lambda: paused() == "false", timeout=30, interval=0.1)
    page = context.new_page()
    sign_in(page, dashboard)

    page.click("tr[data-queue='alpha'] button[name=pause]")

    assert "Pause sent" in page.inner_text("p.notice")
    wait_until(lambda: paused() == "true", timeout=20, interval=0.1, message="the node did not pause")
    page.reload()
    assert "paused" in page.inner_text("tr[data-queue='alpha']")


def test_open_a_deliverys_timeline(
    dashboard: str, context: BrowserContext, sa_engine: Engine, schema: str, tmp_path: Path
) -> None:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    with Session(engine, expire_on_commit=False) as session:
        event = Event(
            notification_key="comment_posted", notification_version=1, idempotency_key="browser-1", payload={}
        )
        session.add(event)
        session.flush()
        notification = Notification(event_id=event.id, recipient_identity="user:7", recipient_type="user")
        session.add(notification)
        session.flush()
        delivery = deliveries.plan_delivery(session, notification.id, "email")
        deliveries.transition_status(session, delivery, "dispatched")
        deliveries.record_attempt(
            session, delivery.id, AttemptOutcome("failed", "temporary", {"status_code": 503}, adapter="test")
        )
        session.commit()
    page = context.new_page()
    sign_in(page, dashboard)

    page.click("header nav >> text=Deliveries")
    screenshot(page, "deliveries", tmp_path)
    page.click(f"tr[data-delivery-id='{delivery.id}'] a >> nth=0")

    page.wait_for_url(f"{dashboard}/chimeway/deliveries/{delivery.id}")
    assert page.locator("#timeline").count() == 1, page.content()[:3000]
    entries = page.locator("#timeline li strong").all_inner_texts()
    assert entries == ["event_created", "delivery_planned", "attempt_failed"]
    assert page.inner_text("#delivery-status") == "failed"
    screenshot(page, "delivery", tmp_path)


def test_an_unauthenticated_request_and_a_forged_post_are_refused(
    dashboard: str, browser: Browser, context: BrowserContext, conn: psycopg.Connection[Any], schema: str
) -> None:
    job = insert_job(conn, schema, "discarded")
    anonymous = browser.new_context()
    try:
        response = anonymous.new_page().goto(f"{dashboard}/jobs/{job.id}")
        assert response is not None
        assert response.status == 401
    finally:
        anonymous.close()

    page = context.new_page()
    sign_in(page, dashboard)
    # Same origin but no CSRF token: what a script injected without the token could send.
    status = page.evaluate(
        """async ([url]) => {
            const body = new URLSearchParams({state: "discarded", confirmed: "yes"});
            return (await fetch(url, {method: "POST", body})).status;
        }""",
        [f"{dashboard}/jobs/{job.id}/retry"],
    )
    assert status == 403
    # Another origin's page posting a form to the dashboard, as a CSRF attack would.
    evil = context.new_page()
    evil.set_content(
        f"""<form id="f" method="post" action="{dashboard}/jobs/{job.id}/retry">
            <input name="state" value="discarded"><input name="confirmed" value="yes"></form>"""
    )
    with evil.expect_navigation():
        evil.evaluate("document.getElementById('f').submit()")
    assert "Retried" not in evil.content()
    assert state_of(conn, schema, job.id) == "discarded"
