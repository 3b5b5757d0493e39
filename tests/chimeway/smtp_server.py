"""A real SMTP server for the email adapter's tests (aiosmtpd), scripted by the recipient's local part.

``bounce@…`` is refused at RCPT (550), ``busy@…`` deferred there (451); ``reject@…`` refused after
the data (554), ``later@…`` deferred there (452); ``hang@…`` never answers the data; ``drop@…``
receives the data then drops the connection without answering; ``drop-once@…`` does that the first
time only; ``quit-hang@…`` accepts the data and never answers the QUIT. A sender
``bounce-all@…``, ``reject-all@…`` or ``later-all@…`` gets that outcome for every recipient.
Every message the server received in full is recorded, parsed, in ``messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USERNAME = "mailer"
PASSWORD = "correct horse battery staple"


@dataclass
class Received:
    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage
    authenticated_as: str | None


@dataclass
class ScriptedHandler:
    messages: list[Received] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.partition("@")[0]
        # A sender named for an outcome gets it for every recipient (the contract checks use it).
        local = {"bounce-all": "bounce"}.get(str(envelope.mail_from).partition("@")[0], local)
        if local == "bounce":
            return "550 5.1.1 <" + address + ">: no such user"
        if local == "busy":
            return "451 4.2.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        local = envelope.rcpt_tos[0].partition("@")[0]
        sender = str(envelope.mail_from).partition("@")[0]
        local = {"reject-all": "reject", "later-all": "later"}.get(sender, local)
        if local == "hang":
            await asyncio.to_thread(self.release.wait, 30)  # until the test ends
            return "451 4.3.0 released"
        if local == "reject":
            return "554 5.6.0 content refused"
        if local == "later":
            return "452 4.3.1 insufficient storage"
        content = cast("bytes", envelope.original_content or envelope.content)
        parsed = cast("EmailMessage", message_from_bytes(content, policy=policy.default))
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, login))
        if local == "quit-hang":
            session.quit_hangs = True  # type: ignore[attr-defined]
        if local == "drop" or (local == "drop-once" and parsed["Message-ID"] not in self.dropped):
            self.dropped.add(str(parsed["Message-ID"]))
            assert server.transport is not None
            server.transport.close()  # the data arrived; its reply never will
        return "250 2.0.0 Ok: queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if getattr(session, "quit_hangs", False):
            await asyncio.to_thread(self.release.wait, 30)  # the data was accepted; the goodbye never is
        return "221 Bye"


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningServer:
    port: int
    handler: ScriptedHandler
    ca_file: str | None = None


@contextlib.contextmanager
def smtp_server(mode: str = "plain", tmp_path: Path | None = None) -> Iterator[RunningServer]:
    """``plain`` (no TLS, no AUTH), ``starttls`` (STARTTLS and AUTH required) or ``tls`` (implicit TLS)."""
    handler = ScriptedHandler()
    options: dict[str, Any] = {}
    ca_file: str | None = None
    if mode != "plain":
        assert tmp_path is not None
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        ca_file = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        if mode == "starttls":
            options = {
                "tls_context": server_context,
                "require_starttls": True,
                "auth_required": True,
                "auth_require_tls": True,
                "authenticator": _authenticate,
            }
        else:
            options = {"ssl_context": server_context, "server_hostname": "127.0.0.1"}
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    if mode == "tls":
        # The readiness probe of aiosmtpd connects with a context of its own: let it trust our CA.
        controller.ssl_context = options["ssl_context"]
    controller.start()
    try:
        yield RunningServer(controller.port, handler, ca_file)
    finally:
        handler.release.set()
        controller.stop()
