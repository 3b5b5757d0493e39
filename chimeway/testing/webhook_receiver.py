"""Helpers for testing applications (and Chimeway itself) against real HTTP: a scripted receiver.

:class:`ScriptedWebhookServer` listens on 127.0.0.1 and answers each webhook delivery by a
script keyed on the recipient: a list of status codes consumed one per attempt (the last one
repeats), each answer after ``delay`` seconds if given. It records every request (with its
``Idempotency-Key`` header) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ReceivedRequest", "ScriptedWebhookServer"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 overflows when a batch of deliveries connects at once: the
    # connections past it wait a second for their SYN to be sent again.
    request_queue_size = 128


@dataclass(frozen=True)
class ReceivedRequest:
    recipient: str
    delivery_id: str
    attempt_number: int
    idempotency_key: str | None
    status: int


class ScriptedWebhookServer:
    """A webhook receiver whose answers are scripted per recipient; use as a context manager."""

    def __init__(
        self, script: Callable[[str], Sequence[int]] | None = None, default: int = 200, delay: float = 0.0
    ) -> None:
        self._script = script or (lambda recipient: [default])
        #: seconds each answer takes, as a real receiver's do (requests are answered concurrently)
        self.delay = delay
        self._answered: dict[str, int] = {}
        self._lock = threading.Lock()
        self.requests: list[ReceivedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def _answer(self, recipient: str) -> int:
        with self._lock:
            count = self._answered.get(recipient, 0)
            self._answered[recipient] = count + 1
        statuses = list(self._script(recipient)) or [200]
        return statuses[min(count, len(statuses) - 1)]

    def start(self) -> ScriptedWebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    document: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    document = {}
                recipient = str(document.get("recipient", ""))
                if owner.delay > 0:
                    time.sleep(owner.delay)
                status = owner._answer(recipient)
                with owner._lock:
                    owner.requests.append(
                        ReceivedRequest(
                            recipient,
                            str(document.get("delivery_id", "")),
                            int(document.get("attempt_number", 0)),
                            self.headers.get("Idempotency-Key"),
                            status,
                        )
                    )
                body = json.dumps(
                    {"id": f"msg-{document.get('delivery_id')}-{document.get('attempt_number')}"}
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedWebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def for_recipient(self, recipient: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.recipient == recipient]


@contextmanager
def scripted_webhook(script: Callable[[str], Sequence[int]]) -> Iterator[ScriptedWebhookServer]:
    with ScriptedWebhookServer(script) as server:
        yield server
