"""Chimeway's dashboard pages (deliveries, a delivery's story, an event's trace), in-process."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import chimeway.web
from chimeway import deliveries
from pgqueue.web import create_app

from .conftest import TEMPORARY, MakeDelivery, MakeNotification, SessionFactory

TOKEN = "chimeway-test-token-0123456789"


@pytest.fixture
def client(dsn: str, schema: str) -> Iterator[TestClient]:
    app = create_app(
        dsn, schema=schema, token=TOKEN, extensions=[chimeway.web.extension()], redact=chimeway.web.redact
    )
    with TestClient(app, headers={"authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


def test_deliveries_are_listed_by_status_and_channel(client: TestClient, make_delivery: MakeDelivery) -> None:
    failed = make_delivery("failed", channel="email")
    make_delivery("succeeded", channel="email")
    make_delivery("pending", channel="in_app")

    page = client.get("/chimeway/", params={"status": "failed", "channel": "email"})

    assert page.status_code == 200
    assert re.findall(r'data-delivery-id="([0-9a-f-]+)"', page.text) == [str(failed)]
    summary = re.search(r'<tr data-channel="email">(.*?)</tr>', page.text, re.S)
    assert summary is not None
    assert 'status=failed">1</a>' in summary.group(1)
    assert 'href="/chimeway/"' in client.get("/").text  # the navigation link
    assert 'href="/jobs"' in page.text
    assert 'href="/chimeway/chimeway/' not in page.text


def test_a_delivery_page_tells_its_explain_timeline(
    client: TestClient, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    session = new_session(expire_on_commit=False)
    delivery = deliveries.plan_delivery(session, make_notification(recipient="user:7"), "email")
    deliveries.transition_status(session, delivery, "dispatched")
    deliveries.record_attempt(session, delivery.id, TEMPORARY)
    session.commit()

    page = client.get(f"/chimeway/deliveries/{delivery.id}")

    assert page.status_code == 200
    timeline = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', page.text, re.S)
    assert timeline is not None
    events = re.findall(r"<strong>(\w+)</strong>", timeline.group(1))
    assert events == ["event_created", "delivery_planned", "attempt_failed"]
    assert "user:7" in page.text


def test_an_event_trace_lists_its_deliveries(
    client: TestClient, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery("succeeded", channel="email")
    story = deliveries.explain_delivery(new_session(), delivery_id)

    trace = client.get(f"/chimeway/events/{story.event_id}")

    assert trace.status_code == 200
    assert f"/chimeway/deliveries/{delivery_id}" in trace.text
    assert "succeeded" in trace.text
    assert "Nice post!" not in trace.text  # notification content stays out
    story_page = client.get(f"/chimeway/deliveries/{delivery_id}")
    assert f"/chimeway/events/{story.event_id}" in story_page.text


def test_unknown_or_malformed_ids_are_404_and_bad_filters_400(client: TestClient) -> None:
    assert client.get(f"/chimeway/deliveries/{uuid.uuid4()}").status_code == 404
    assert client.get("/chimeway/deliveries/not-a-uuid").status_code == 404
    assert client.get(f"/chimeway/events/{uuid.uuid4()}").status_code == 404
    bad = client.get("/chimeway/", params={"channel": "x'; --"})
    assert bad.status_code == 400
    assert "channel:" in bad.text
    assert client.get("/chimeway/", params={"status": "weird"}).status_code == 400
    assert client.get("/chimeway/", params={"before": "garbage"}).status_code == 400


def test_the_delivery_pages_need_authentication(dsn: str, schema: str) -> None:
    app = create_app(dsn, schema=schema, token=TOKEN, extensions=[chimeway.web.extension()])
    with TestClient(app) as anonymous:
        assert anonymous.get("/chimeway/").status_code == 401


def test_metrics_include_deliveries_by_channel_and_status(
    client: TestClient, make_delivery: MakeDelivery
) -> None:
    from tests.helpers import parse_metrics

    make_delivery("failed", channel="email")
    make_delivery("failed", channel="email")
    make_delivery("pending", channel="in_app")

    scrape = parse_metrics(client.get("/metrics").text)

    assert scrape[("chimeway_deliveries", (("channel", "email"), ("status", "failed")))] == 2
    assert scrape[("chimeway_deliveries", (("channel", "in_app"), ("status", "pending")))] == 1


def test_the_command_lines_dashboard_redacts_with_chimeways_policy(dsn: str, schema: str) -> None:
    from chimeway import redaction
    from pgqueue.web.serve import build_app

    app = build_app(
        dsn=dsn,
        schema=schema,
        token=TOKEN,
        basic_auth=None,
        insecure_no_auth=False,
        read_only=False,
        extensions=["chimeway.web:extension"],
    )
    previous = redaction.current_policy()
    redaction.add_sensitive_names("iban")
    try:
        shown = app.state.dashboard.redact({"iban": "DE00", "order": 7, "nested": {"api_key": "k"}})
    finally:
        redaction.set_policy(previous)
    assert shown == {"order": 7, "nested": {}}
