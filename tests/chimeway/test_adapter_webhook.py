"""The webhook adapter against a real HTTP server on 127.0.0.1, scripted per request by its path."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from chimeway.adapters import Delivered, DeliveryContext, Failed, WebhookAdapter, classify
from chimeway.webhooks import generate_secret, verify

# path → (status, JSON body or None, extra headers)
SCRIPTS: dict[str, tuple[int, Any, dict[str, str]]] = {
    "/ok": (200, {"id": "msg-1", "status": "queued"}, {}),
    "/message-id": (201, {"message_id": 77}, {}),
    "/no-body": (204, None, {}),
    "/500": (500, {"error": "boom"}, {}),
    "/503": (503, None, {"Retry-After": "30"}),
    "/429": (429, None, {}),
    "/408": (408, None, {}),
    "/425": (425, None, {}),
    "/410": (410, None, {}),
    "/400": (400, {"error": "bad payload"}, {}),
    "/404": (404, None, {}),
    "/302": (302, None, {"Location": "/ok"}),
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookServer:
    base_url: str
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture(scope="module")
def running_server() -> Iterator[WebhookServer]:
    """One server for the module; each test gets it with no requests recorded."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            path = urlsplit(self.path).path
            state.received.append(Received(path, {k.lower(): v for k, v in self.headers.items()}, body))
            if path == "/slow":
                state.release.wait(5)  # past the client's timeout; released at teardown
                return
            status, document, headers = SCRIPTS[path]
            payload = b"" if document is None else json.dumps(document).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = WebhookServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(running_server: WebhookServer) -> Iterator[WebhookServer]:
    running_server.received.clear()
    running_server.release.clear()
    yield running_server
    running_server.release.set()  # let a request still sleeping in /slow finish


def deliver(delivery: DeliveryContext, config: dict[str, Any]) -> Delivered | Failed:
    """One call of a fresh adapter, in an event loop of its own."""
    return anyio.run(WebhookAdapter().deliver, delivery, config)


def context(attempt_number: int = 2) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        channel="webhook",
        attempt_number=attempt_number,
        notification_key="comment_posted",
        recipient_identity="user:42",
        metadata={"subject": "New comment"},
    )


def test_a_2xx_is_delivered_with_the_id_of_the_answer_and_the_request_carries_the_idempotency_key(
    server: WebhookServer,
) -> None:
    delivery = context(attempt_number=2)

    result = deliver(delivery, {"url": server.url("/ok")})

    assert result == Delivered({"adapter": "webhook", "status_code": 200, "provider_message_id": "msg-1"})
    assert classify(result).provider_message_id == "msg-1"
    (request,) = server.received
    assert request.headers["idempotency-key"] == f"{delivery.delivery_id}:2"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "delivery_id": str(delivery.delivery_id),
        "notification_id": str(delivery.notification_id),
        "notification_key": "comment_posted",
        "channel": "webhook",
        "attempt_number": 2,
        "recipient": "user:42",
        "metadata": {"subject": "New comment"},
    }


@pytest.mark.parametrize(
    ("path", "message_id"),
    [("/message-id", "77"), ("/no-body", None)],
)
def test_a_2xx_takes_message_id_when_present_and_accepts_an_empty_answer(
    server: WebhookServer, path: str, message_id: str | None
) -> None:
    result = deliver(context(), {"url": server.url(path)})

    assert isinstance(result, Delivered)
    assert result.meta.get("provider_message_id") == message_id


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/500", Failed("temporary", {"status_code": 500})),
        ("/503", Failed("temporary", {"status_code": 503, "retry_after": "30"})),
        ("/429", Failed("temporary", {"status_code": 429})),
        ("/408", Failed("temporary", {"status_code": 408})),
        ("/425", Failed("temporary", {"status_code": 425})),
        ("/410", Failed("bounced", {"status_code": 410})),
        ("/400", Failed("permanent", {"status_code": 400})),
        ("/404", Failed("permanent", {"status_code": 404})),
    ],
)
def test_an_error_answer_is_classified_by_its_status_and_still_carried_the_idempotency_key(
    server: WebhookServer, path: str, expected: Failed
) -> None:
    delivery = context()

    result = deliver(delivery, {"url": server.url(path)})

    assert result == expected
    assert server.received[0].headers["idempotency-key"] == delivery.idempotency_key


def test_a_redirect_is_not_followed_and_is_permanent(server: WebhookServer) -> None:
    result = deliver(context(), {"url": server.url("/302")})

    assert isinstance(result, Failed)
    assert (result.kind, result.detail["status_code"]) == ("permanent", 302)
    assert [r.path for r in server.received] == ["/302"]


def test_an_answer_slower_than_the_timeout_is_temporary(server: WebhookServer) -> None:
    delivery = context()

    result = deliver(delivery, {"url": server.url("/slow"), "timeout": 0.2})

    assert result == Failed("temporary", {"error": "timeout", "timeout": 0.2})
    assert server.received[0].headers["idempotency-key"] == delivery.idempotency_key


def test_a_refused_connection_is_temporary() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = deliver(context(), {"url": f"http://127.0.0.1:{port}/hook", "timeout": 2})

    assert result == Failed("temporary", {"error": "connection_failed", "exception": "ConnectError"})


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({}, "the webhook channel has no url configured"),
        ({"url": "ftp://127.0.0.1/hook"}, "invalid_url"),
        (
            {"url": "http://127.0.0.1/hook", "timeout": 0},
            "the webhook timeout must be a positive number of seconds",
        ),
    ],
)
def test_a_configuration_that_can_never_work_is_permanent(config: dict[str, Any], error: str) -> None:
    assert deliver(context(), config) == Failed("permanent", {"error": error})


def test_secrets_are_sent_as_headers_but_never_reach_the_response_or_the_logs(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "url": server.url("/ok?key=url-credential"),
        "token": "tok-123",
        "legacy_secret": "shh-456",
        "headers": {"X-Tenant": "acme"},
    }

    with caplog.at_level(logging.DEBUG):
        result = deliver(context(), config)

    (request,) = server.received
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["x-tenant"] == "acme"
    signature = hmac.new(b"shh-456", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-chimeway-signature"] == f"sha256={signature}"
    assert "webhook-signature" not in request.headers  # no Standard Webhooks secret configured
    stored = json.dumps(classify(result).provider_response)
    for secret in ("tok-123", "shh-456", "url-credential"):
        assert secret not in stored
    for secret in ("tok-123", "shh-456"):  # in no log at all, httpx's and httpcore's included
        assert secret not in caplog.text
    # httpx itself logs the URL at INFO; ours never does
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("chimeway"))
    assert "url-credential" not in ours
    assert "HTTP 200" in ours


@pytest.mark.anyio
async def test_a_given_client_is_used_and_left_open(server: WebhookServer) -> None:
    async with httpx.AsyncClient() as client:
        adapter = WebhookAdapter(client)

        assert isinstance(await adapter.deliver(context(), {"url": server.url("/ok")}), Delivered)
        assert isinstance(await adapter.deliver(context(), {"url": server.url("/ok")}), Delivered)
        assert not client.is_closed


def test_a_standard_webhooks_secret_signs_with_the_three_headers_and_not_the_old_one(
    server: WebhookServer,
) -> None:
    secret = generate_secret()
    delivery = context(attempt_number=3)
    before = int(time.time())

    deliver(delivery, {"url": server.url("/ok"), "secret": secret})

    (request,) = server.received
    assert request.headers["webhook-id"] == str(delivery.delivery_id)
    assert before <= int(request.headers["webhook-timestamp"]) <= time.time()
    assert request.headers["webhook-signature"].startswith("v1,")
    assert "x-chimeway-signature" not in request.headers
    assert verify(request.body, request.headers, secret).message_id == str(delivery.delivery_id)
