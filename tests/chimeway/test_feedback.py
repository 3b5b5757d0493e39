"""Provider feedback: verified, deduplicated, applied once to the delivery that sent the message;
through the API (sync and async) and through the ASGI endpoint served by uvicorn for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from chimeway import deliveries, explain_delivery
from chimeway.deliveries import AttemptOutcome
from chimeway.feedback import (
    InvalidFeedback,
    ProviderFeedback,
    aapply_feedback,
    apply_feedback,
    areceive,
    receive,
)
from chimeway.models import Delivery
from chimeway.webhooks import generate_secret, parse_secrets, signed_headers

from ..helpers import wait_until
from .conftest import MakeNotification, SessionFactory
from .smtp_server import free_port

SECRET = generate_secret()
ROOT = Path(__file__).resolve().parents[2]


def accepted_delivery(
    new_session: SessionFactory, make_notification: MakeNotification
) -> tuple[uuid.UUID, str]:
    """A delivery whose email the provider accepted: (delivery id, provider message id)."""
    session = new_session(expire_on_commit=False)
    delivery = deliveries.plan_delivery(session, make_notification(recipient="user:9"), "email")
    deliveries.transition_status(session, delivery, "dispatched")
    message_id = f"<{delivery.id}@acme.test>"
    outcome = AttemptOutcome(
        "succeeded", None, {"smtp_code": 250}, provider_message_id=message_id, adapter="email"
    )
    deliveries.record_attempt(session, delivery.id, outcome)
    session.commit()
    session.close()
    return delivery.id, message_id


def signed(
    document: Any, *, event_id: str = "evt-1", timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = signed_headers(body, message_id=event_id, keys=parse_secrets(SECRET), timestamp=timestamp)
    return body, headers | {"content-type": "application/json"}


def row(new_session: SessionFactory, delivery_id: uuid.UUID) -> tuple[str, str | None, Any]:
    with new_session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery.status, delivery.suppression_reason, delivery.metadata_.get("provider_feedback")


def test_a_bounce_cancels_the_accepted_delivery_once_and_explain_tells_it(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    body, headers = signed({"type": "bounced", "provider_message_id": message_id})

    with psycopg.connect(dsn) as conn:
        first = receive(conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema)
        again = receive(conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema)

    assert (first.result, first.delivery_id, first.status, first.suppression_reason, first.changed) == (
        "applied",
        delivery_id,
        "cancelled",
        "bounced",
        True,
    )
    assert (again.result, again.changed) == ("duplicate", False)
    status, reason, recorded = row(new_session, delivery_id)
    assert (status, reason) == ("cancelled", "bounced")
    assert [(e["type"], e["adapter"], e["provider_event_id"]) for e in recorded] == [
        ("bounced", "email", "evt-1")
    ]
    with new_session() as session:
        story = explain_delivery(session, delivery_id)
    events = [entry.event for entry in story.timeline]
    assert events[-2:] == ["provider_bounced", "cancelled"]
    assert story.timeline[-2].detail == {"adapter": "email", "provider_event_id": "evt-1"}
    assert story.why == "cancelled after attempt 1 was accepted: the provider reported a bounce"


def test_delivered_and_complained_are_recorded_without_changing_the_status(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    with psycopg.connect(dsn) as conn:
        for number, kind in enumerate(("delivered", "complained")):
            feedback = ProviderFeedback(kind, message_id, f"evt-{number}")  # type: ignore[arg-type]
            outcome = apply_feedback(conn, "email", feedback, schema=schema)
            assert (outcome.result, outcome.status, outcome.changed) == ("applied", "succeeded", False)
        conn.commit()
    status, reason, recorded = row(new_session, delivery_id)
    assert (status, reason) == ("succeeded", None)
    assert [e["type"] for e in recorded] == ["delivered", "complained"]
    with new_session() as session:
        events = [entry.event for entry in explain_delivery(session, delivery_id).timeline]
    assert "provider_delivered" in events
    assert "provider_complained" in events


def test_an_unknown_message_id_or_another_adapters_message_writes_nothing(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    with psycopg.connect(dsn) as conn:
        unknown = apply_feedback(conn, "email", ProviderFeedback("bounced", "<nope@x>", "e1"), schema=schema)
        other = apply_feedback(conn, "sms", ProviderFeedback("bounced", message_id, "e2"), schema=schema)
        conn.commit()
    assert (unknown.result, other.result) == ("unknown_message", "unknown_message")
    assert row(new_session, delivery_id) == ("succeeded", None, None)


STALE = -3600  # a timestamp an hour old


@pytest.mark.parametrize(
    ("document", "age", "error"),
    [
        (None, 0, "webhook-id header is missing"),  # unsigned
        (b"not json", 0, "not JSON"),
        ({"type": "opened", "provider_message_id": "m"}, 0, "type must be one of"),
        ({"type": "bounced"}, 0, "provider_message_id must be a non-empty string"),
        ({"type": "bounced", "provider_message_id": "m\n"}, 0, "printable"),
        ([1, 2], 0, "must be a JSON object"),
        ({"type": "bounced", "provider_message_id": "m"}, STALE, "tolerance"),
    ],
)
def test_a_malformed_unsigned_or_stale_webhook_is_refused_and_writes_nothing(
    dsn: str,
    schema: str,
    new_session: SessionFactory,
    make_notification: MakeNotification,
    document: Any,
    age: int,
    error: str,
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    if document is None:
        body, headers = json.dumps({"type": "bounced", "provider_message_id": message_id}).encode(), {}
    else:
        body, headers = signed(document, timestamp=int(time.time()) + age)  # signed now, at the test
    with psycopg.connect(dsn) as conn, pytest.raises(InvalidFeedback, match=error):
        receive(conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema)
    assert row(new_session, delivery_id) == ("succeeded", None, None)


def test_a_body_signed_with_another_secret_is_refused(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    body, headers = signed({"type": "bounced", "provider_message_id": message_id})
    with psycopg.connect(dsn) as conn, pytest.raises(InvalidFeedback, match="no webhook-signature matches"):
        receive(conn, adapter="email", body=body, headers=headers, secret=generate_secret(), schema=schema)
    assert row(new_session, delivery_id) == ("succeeded", None, None)


def test_the_same_event_applied_concurrently_is_applied_once(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    body, headers = signed({"type": "bounced", "provider_message_id": message_id}, event_id="evt-race")
    results: list[str] = []
    start = threading.Barrier(4)

    def send() -> None:
        with psycopg.connect(dsn) as conn:
            start.wait(timeout=10)
            outcome = receive(conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema)
            results.append(outcome.result)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["applied", "duplicate", "duplicate", "duplicate"]
    _status, _reason, recorded = row(new_session, delivery_id)
    assert len(recorded) == 1


@pytest.mark.anyio
async def test_the_async_twins_apply_in_an_async_session_and_on_an_async_connection(
    dsn: str,
    schema: str,
    new_session: SessionFactory,
    make_notification: MakeNotification,
    sa_async_session: AsyncSession,
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    outcome = await aapply_feedback(
        sa_async_session, "email", ProviderFeedback("delivered", message_id, "evt-a"), schema=schema
    )
    await sa_async_session.commit()
    assert (outcome.result, outcome.status) == ("applied", "succeeded")

    body, headers = signed({"type": "bounced", "provider_message_id": message_id}, event_id="evt-b")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        bounced = await areceive(
            conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema
        )
        replay = await areceive(
            conn, adapter="email", body=body, headers=headers, secret=SECRET, schema=schema
        )
    assert (bounced.result, bounced.status, replay.result) == ("applied", "cancelled", "duplicate")
    status, reason, recorded = row(new_session, delivery_id)
    assert (status, reason, [e["type"] for e in recorded]) == (
        "cancelled",
        "bounced",
        ["delivered", "bounced"],
    )


@pytest.fixture
def endpoint(dsn: str, schema: str) -> Iterator[str]:
    """The feedback endpoint served by uvicorn in a process of its own; its base URL."""
    port = free_port()
    env = os.environ | {"FEEDBACK_DSN": dsn, "FEEDBACK_SCHEMA": schema, "FEEDBACK_SECRET": SECRET}
    command = [sys.executable, "-m", "uvicorn", "--factory", "tests.chimeway.feedback_app:create"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"

    def answering() -> bool:
        assert process.poll() is None, f"uvicorn exited: {process.stderr.read() if process.stderr else ''}"
        try:
            return httpx.get(url, timeout=1).status_code == 405
        except httpx.TransportError:
            return False

    try:
        # Starting takes a second or two; far longer on a loaded machine (imports dominate).
        wait_until(answering, timeout=90, interval=0.1, message="uvicorn never answered")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.system
def test_the_asgi_endpoint_under_uvicorn_applies_a_bounce_once_and_refuses_bad_webhooks(
    endpoint: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    delivery_id, message_id = accepted_delivery(new_session, make_notification)
    body, headers = signed({"type": "bounced", "provider_message_id": message_id}, event_id="evt-http")

    with httpx.Client(timeout=10) as client:
        unsigned = client.post(endpoint, content=body, headers={"content-type": "application/json"})
        tampered = client.post(endpoint, content=body.replace(b"bounced", b"delivered"), headers=headers)
        malformed = client.post(endpoint, content=b"{", headers=signed(b"{")[1])
        assert row(new_session, delivery_id) == ("succeeded", None, None), "nothing written by a refusal"
        first = client.post(endpoint, content=body, headers=headers)
        replay = client.post(endpoint, content=body, headers=headers)
        unknown_body, unknown_headers = signed(
            {"type": "bounced", "provider_message_id": "<x@y>"}, event_id="e9"
        )
        unknown = client.post(endpoint, content=unknown_body, headers=unknown_headers)
        big_body, big_headers = signed({"type": "bounced", "provider_message_id": "m", "pad": "x" * 70_000})
        too_big = client.post(endpoint, content=big_body, headers=big_headers)

    assert [r.status_code for r in (unsigned, tampered, malformed)] == [400, 400, 400]
    assert "webhook-id header is missing" in unsigned.json()["error"]
    assert first.status_code == 200
    assert first.json() == {
        "result": "applied",
        "delivery_id": str(delivery_id),
        "status": "cancelled",
        "suppression_reason": "bounced",
        "changed": True,
    }
    assert (replay.status_code, replay.json()["result"], replay.json()["changed"]) == (
        200,
        "duplicate",
        False,
    )
    assert (unknown.status_code, unknown.json()) == (404, {"result": "unknown_message"})
    assert too_big.status_code == 413
    status, reason, recorded = row(new_session, delivery_id)
    assert (status, reason, len(recorded)) == ("cancelled", "bounced", 1)
    with new_session() as session:
        assert "provider_bounced" in [e.event for e in explain_delivery(session, delivery_id).timeline]
