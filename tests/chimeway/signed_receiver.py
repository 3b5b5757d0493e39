"""A webhook receiver process for the signing tests: verifies each request with chimeway.webhooks.

Run as ``python tests/chimeway/signed_receiver.py <whsec secret>``; prints its port on the first
line of stdout, then answers each POST: 200 ``{"id": <webhook-id>}`` when the signature verifies,
401 ``{"error": …}`` when it does not. It stops when its stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chimeway.webhooks import WebhookVerificationError, verify


def main() -> None:
    secret = sys.argv[1]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                verified = verify(body, dict(self.headers.items()), secret)
                status, answer = 200, {"id": verified.message_id}
            except WebhookVerificationError as exc:
                status, answer = 401, {"error": str(exc)}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
