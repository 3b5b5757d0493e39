"""The webhook adapter against a hostile receiver: a real TCP server in a thread, byte by byte.

Endless, huge and dripping answers are bounded by the read cap and the call's one deadline; once
a 2xx status has decided, nothing in the body turns it into a failure; an unusable message id is
dropped or hashed, never a reason for the delivery to stay ``dispatched``. Also the keep-alive
transport's framing: chunked bodies, ``Connection: close``, 1xx answers, and a reused connection
the server closed meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from chimeway.adapters import Delivered, DeliveryContext, Failed, WebhookAdapter
from chimeway.dispatch import ChannelRoute, Dispatcher, DispatchWorker
from chimeway.models import Delivery, DeliveryAttempt
from pgqueue.testing import build_job

from .conftest import MakeDelivery, SessionFactory

pytestmark = pytest.mark.anyio

LONG_ID = "x" * 10_000


def _answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


class Hostile(socketserver.BaseRequestHandler):
    """Reads requests off one connection and answers each as its path says."""

    server: HostileServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        buffer = b""
        self.server.connections += 1
        while not self.server.closing.is_set():
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += conn.recv(65536)
            buffer = buffer[length:]
            path = head.split(b" ")[1].decode()
            self.server.paths.append(path)
            try:
                if not self.answer(conn, path):
                    return
            except OSError:
                return

    def answer(self, conn: socket.socket, path: str) -> bool:
        """Answer one request; False closes the connection."""
        closing = self.server.closing
        if path == "/ok":
            conn.sendall(_answer(b'{"id": "ok-1"}'))
        elif path == "/endless":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
            while not closing.is_set():
                conn.sendall(block)
            return False
        elif path == "/huge":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2**30))
            zeros = b"\0" * 2**20
            for _ in range(1024):
                if closing.is_set():
                    break
                conn.sendall(zeros)
            return False
        elif path == "/drip-head":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":
                if closing.wait(1.0):
                    break
                conn.sendall(bytes([byte]))
            return False
        elif path == "/drip-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            for _ in range(99):
                if closing.wait(1.0):
                    break
                conn.sendall(b" ")
            return False
        elif path == "/nul-id":
            conn.sendall(_answer(b'{"id": "msg\\u0000id"}'))
        elif path == "/long-id":
            conn.sendall(_answer(b'{"id": "%s"}' % LONG_ID.encode()))
        elif path == "/deep":
            conn.sendall(_answer(b"[" * 100_000 + b"]" * 100_000))
        elif path == "/deep-small":
            conn.sendall(_answer(b"[" * 30_000 + b"]" * 30_000))
        elif path == "/chunked":
            conn.sendall(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n")
            conn.sendall(b'4\r\n{"id\r\n9;ext=1\r\n": "c-1"}\r\n0\r\nX-Trailer: t\r\n\r\n')
        elif path == "/close":
            conn.sendall(_answer(b'{"id": "k-1"}', extra=b"Connection: close\r\n"))
            return False
        elif path == "/continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(b'{"id": "after-100"}'))
        elif path == "/stale":
            conn.sendall(_answer(b'{"id": "s-1"}'))  # promises keep-alive, then hangs up
            return False
        elif path == "/bad-chunk":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\n{}\r\n")
            return False
        elif path == "/bad-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}")
            return False
        elif path == "/503":
            conn.sendall(_answer(b"", "503 Service Unavailable", b"Retry-After: 7\r\n"))
        return True


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a batch connecting at once, on a busy machine, would
    # overflow it and wait a second for the SYN to be sent again.
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Hostile)
        self.paths: list[str] = []
        self.connections = 0
        self.closing = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


def context() -> DeliveryContext:
    return DeliveryContext(uuid.uuid4(), uuid.uuid4(), "webhook", 1, "comment_posted", "user:42", {"a": 1})


async def call(adapter: WebhookAdapter, url: str, timeout: float = 1.0) -> tuple[Delivered | Failed, float]:
    started = time.monotonic()
    result = await adapter.deliver(context(), {"url": url, "timeout": timeout})
    return result, time.monotonic() - started


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("path", ["/endless", "/huge"])
async def test_an_endless_or_huge_2xx_body_is_read_up_to_the_cap_and_delivered(
    hostile: HostileServer, path: str
) -> None:
    adapter = WebhookAdapter()
    await adapter.open()
    before = peak_rss_mb()
    try:
        result, took = await call(adapter, hostile.url(path), timeout=5)
    finally:
        await adapter.aclose()

    assert result == Delivered({"adapter": "webhook", "status_code": 200})
    assert took < 3
    assert peak_rss_mb() - before < 50, "the body was not buffered"


async def test_a_receiver_dripping_its_status_line_times_out_within_the_deadline(
    hostile: HostileServer,
) -> None:
    result, took = await call(WebhookAdapter(), hostile.url("/drip-head"), timeout=1.0)

    assert result == Failed("temporary", {"error": "timeout", "timeout": 1.0})
    assert took < 2.5


async def test_a_2xx_whose_body_drips_is_delivered_when_the_deadline_cuts_the_body(
    hostile: HostileServer,
) -> None:
    result, took = await call(WebhookAdapter(), hostile.url("/drip-body"), timeout=1.0)

    assert result == Delivered({"adapter": "webhook", "status_code": 200})
    assert took < 2.5


@pytest.mark.parametrize(
    ("path", "message_id"),
    [
        ("/nul-id", None),
        ("/long-id", "sha256:" + hashlib.sha256(LONG_ID.encode()).hexdigest()),
        ("/deep", None),
        ("/deep-small", None),
        ("/chunked", "c-1"),
        ("/continue", "after-100"),
        ("/bad-chunk", None),
    ],
)
async def test_once_the_status_decided_the_body_only_gives_or_withholds_the_message_id(
    hostile: HostileServer, path: str, message_id: str | None
) -> None:
    result, _ = await call(WebhookAdapter(), hostile.url(path))

    assert isinstance(result, Delivered)
    assert result.meta.get("provider_message_id") == message_id


async def test_a_head_with_a_malformed_content_length_is_a_temporary_failure(hostile: HostileServer) -> None:
    result, _ = await call(WebhookAdapter(), hostile.url("/bad-length"))

    assert isinstance(result, Failed)
    assert result.kind == "temporary"


async def test_a_shared_client_keeps_its_connection_alive_and_replaces_one_the_server_closed(
    hostile: HostileServer,
) -> None:
    adapter = WebhookAdapter()
    await adapter.open()
    try:
        results = [(await call(adapter, hostile.url(path)))[0] for path in ("/ok", "/ok", "/ok")]
        assert hostile.connections == 1, "three requests, one connection"
        stale = (await call(adapter, hostile.url("/stale")))[0]
        await asyncio.sleep(0.1)  # the server hangs up; the client's stack still holds the connection
        after = (await call(adapter, hostile.url("/ok")))[0]
        closed = (await call(adapter, hostile.url("/close")))[0]
        again = (await call(adapter, hostile.url("/ok")))[0]
    finally:
        await adapter.aclose()

    assert [r.meta["provider_message_id"] for r in results] == ["ok-1"] * 3  # type: ignore[union-attr]
    assert isinstance(stale, Delivered)
    assert isinstance(after, Delivered), "the request was sent again on a new connection"
    assert isinstance(closed, Delivered)
    assert isinstance(again, Delivered)
    assert hostile.connections == 3, "a new connection after the server's hang-up and after Connection: close"
    assert hostile.paths == ["/ok", "/ok", "/ok", "/stale", "/ok", "/close", "/ok"]


async def test_a_header_with_a_line_break_is_a_permanent_failure_and_sends_nothing(
    hostile: HostileServer,
) -> None:
    config = {"url": hostile.url("/ok"), "headers": {"X-Evil": "a\r\nX-Injected: 1"}}

    result = await WebhookAdapter().deliver(context(), config)

    assert result == Failed("permanent", {"error": "invalid_headers"})
    assert hostile.paths == []


async def test_a_503_is_temporary_with_its_retry_after(hostile: HostileServer) -> None:
    result, _ = await call(WebhookAdapter(), hostile.url("/503"))

    assert result == Failed("temporary", {"status_code": 503, "retry_after": "7"})


async def test_through_the_dispatcher_every_hostile_2xx_ends_succeeded_after_one_request(
    hostile: HostileServer, dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    paths = ["/endless", "/huge", "/drip-body", "/nul-id", "/long-id", "/deep", "/ok"]
    routes = {
        path.strip("/"): ChannelRoute(WebhookAdapter(), {"url": hostile.url(path), "timeout": 1.0})
        for path in paths
    }
    ids = {channel: make_delivery(channel=channel) for channel in routes}
    dispatcher = Dispatcher(dsn, schema=schema, routes=routes)
    jobs: list[Any] = [
        build_job(DispatchWorker, DispatchWorker.new({"delivery_id": str(d)}), attempt=1)
        for d in ids.values()
    ]

    async with dispatcher:
        results = await asyncio.gather(*(dispatcher.perform(job) for job in jobs))

    assert results == [None] * len(paths)
    assert sorted(hostile.paths) == sorted(paths), "each receiver was sent to exactly once"
    with new_session() as session:
        for channel, delivery_id in ids.items():
            delivery = session.get(Delivery, delivery_id)
            attempts = session.query(DeliveryAttempt).filter(DeliveryAttempt.delivery_id == delivery_id).all()
            assert delivery is not None
            assert (delivery.status, len(attempts)) == ("succeeded", 1), channel
            message_id = attempts[0].provider_message_id
            assert message_id is None or (len(message_id) <= 255 and "\x00" not in message_id)
