"""Send each delivery as an email over SMTP (``"email"``), and classify the server's answer.

Config (per channel):

=======================  ======================================================================
``host``                 the SMTP server (required)
``port``                 default 587 with ``security = "starttls"``, 465 with ``"tls"``, 25
                         with ``"none"``
``security``             ``"starttls"`` (default: upgrade the connection, refuse a server that
                         can't), ``"tls"`` (TLS from the first byte) or ``"none"`` (plain
                         text; tests only)
``ca_file``              a PEM bundle to trust instead of the system's (a private CA)
``username``             log in with AUTH (with ``password``; not with ``security = "none"``)
``password``
``from``                 the sender address (required), e.g. ``"Acme <notify@acme.test>"``
``timeout``              seconds the whole exchange may take, connecting to the reply to the
                         data (default 30)
``message_id_domain``    the right-hand side of ``Message-ID`` (default: the sender's domain)
=======================  ======================================================================

The message comes from the notification's content (what the notifier's ``build`` returned):
``to`` (else the recipient identity, when it is an address), ``subject``, and ``text`` and/or
``html`` (both: a ``multipart/alternative`` with the text first). Non-ASCII subjects and bodies
are encoded as the RFC says (the default email policy). ``Message-ID`` is
``<delivery id@domain>``, the same on every attempt of a delivery: a retry after a lost reply
(the server hung or dropped the connection after the data) carries the same id, so the mail
system and the reader's client can drop the duplicate. It is also the provider message id
recorded on the attempt, which provider feedback (:mod:`chimeway.feedback`) finds it by.

Answers: 250 to the data → delivered. A 4xx reply at any stage, a timeout, a dropped or refused
connection → temporary. A 5xx reply to the recipient (no such mailbox) → bounced; any other 5xx
(the sender, the content, the login refused) → permanent, as is a configuration that can never
work (no host, no sender, no recipient address, no body). The server's reply text is never stored
or logged (it often quotes the address); its code is.

``deliver`` is ``async`` (aiosmtplib, on the worker's event loop): many deliveries are in flight
at once without a thread each, and the deadline cancels the exchange itself, closing the
connection, where a thread blocked in smtplib would run on past it. Each delivery opens its own
connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Final

import aiosmtplib

from ..states import FailureKind
from .base import Delivered, DeliveryContext, Failed

__all__ = ["DEFAULT_SMTP_TIMEOUT", "EmailAdapter"]

DEFAULT_SMTP_TIMEOUT: Final = 30.0
#: The dispatcher's deadline exceeds the adapter's by this much, so the adapter's own timeout wins.
DEADLINE_GRACE: Final = 1.0
_PORTS: Final = {"starttls": 587, "tls": 465, "none": 25}
_MAX_TEXT: Final = 1_000_000
_QUIT_TIMEOUT: Final = 1.0

_log = logging.getLogger("chimeway.adapters.email")


class _Unusable(Exception):
    """The configuration or the content can never make a valid message (permanent)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class EmailAdapter:
    """Sends deliveries as email with aiosmtplib; ``resolve_adapter("email")`` returns one."""

    name = "email"

    def attempt_timeout(self, config: Mapping[str, Any]) -> float:
        """How long one call may take with ``config``: its ``timeout`` and a little grace."""
        timeout = _timeout(config)
        return (timeout if timeout is not None else DEFAULT_SMTP_TIMEOUT) + DEADLINE_GRACE

    async def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
        try:
            options = _connection_options(config)
            message, recipient = _build_message(delivery, config)
        except _Unusable as exc:
            return self._failed(delivery, "permanent", {"error": exc.error})
        timeout = options["timeout"]
        stage = "connect"
        client = aiosmtplib.SMTP(**options)
        accepted = False
        try:
            async with asyncio.timeout(timeout):
                await client.connect()  # with STARTTLS and AUTH as configured
                stage = "send"
                refused, _reply = await client.send_message(message, recipients=[recipient])
                accepted = True
        except TimeoutError:
            return self._failed(
                delivery, "temporary", {"error": "timeout", "timeout": timeout, "stage": stage}
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients] or [550]
            kind: FailureKind = "temporary" if all(400 <= c < 500 for c in codes) else "bounced"
            return self._failed(delivery, kind, {"error": "recipient_refused", "smtp_code": codes[0]})
        except aiosmtplib.SMTPTimeoutError:
            return self._failed(
                delivery, "temporary", {"error": "timeout", "timeout": timeout, "stage": stage}
            )
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, ConnectionError) as exc:
            detail = {"error": "connection_failed", "exception": type(exc).__name__, "stage": stage}
            return self._failed(delivery, "temporary", detail)
        except aiosmtplib.SMTPResponseException as exc:
            kind = "temporary" if 400 <= exc.code < 500 else "permanent"
            return self._failed(delivery, kind, {"error": _refusal(exc), "smtp_code": exc.code})
        except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not offered: a config mistake
            return self._failed(
                delivery, "permanent", {"error": "smtp_error", "exception": type(exc).__name__}
            )
        except (ssl.SSLError, OSError) as exc:  # a certificate refused, an unreachable host
            detail = {"error": "connection_failed", "exception": type(exc).__name__, "stage": stage}
            return self._failed(delivery, "temporary", detail)
        finally:
            # Once the data is accepted nothing after it (a QUIT unanswered) may turn it into a retry.
            await _goodbye(client, polite=accepted)
        if refused:  # a single recipient: the server refused it yet accepted the message (never seen)
            return self._failed(delivery, "bounced", {"error": "recipient_refused"})
        message_id = str(message["Message-ID"])
        _log.info(
            "email delivery %s on channel %s (attempt %d): accepted",
            delivery.delivery_id,
            delivery.channel,
            delivery.attempt_number,
        )
        # The data was accepted (a refusal raises): 250, whatever the reply's text says.
        return Delivered({"adapter": "email", "smtp_code": 250, "provider_message_id": message_id})

    def _failed(self, delivery: DeliveryContext, kind: FailureKind, detail: dict[str, Any]) -> Failed:
        _log.info(
            "email delivery %s on channel %s (attempt %d) failed: %s",
            delivery.delivery_id,
            delivery.channel,
            delivery.attempt_number,
            detail.get("exception", detail["error"]),
        )
        return Failed(kind, detail)


async def _goodbye(client: aiosmtplib.SMTP, *, polite: bool) -> None:
    """After an accepted message, QUIT (for a second at most); then, in any case, close."""
    try:
        if polite and client.is_connected:
            async with asyncio.timeout(_QUIT_TIMEOUT):
                await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


def _refusal(exc: aiosmtplib.SMTPResponseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return "login_refused"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return "sender_refused"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return "message_refused"
    return "smtp_refused"


def _timeout(config: Mapping[str, Any]) -> float | None:
    timeout = config.get("timeout", DEFAULT_SMTP_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 1e6:
        return None
    return float(timeout)


def _connection_options(config: Mapping[str, Any]) -> dict[str, Any]:
    host = config.get("host")
    if not isinstance(host, str) or not host:
        raise _Unusable("the email channel has no host configured")
    security = config.get("security", "starttls")
    if security not in _PORTS:
        raise _Unusable("the email security must be starttls, tls or none")
    port = config.get("port", _PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _Unusable("the email port must be an integer from 1 to 65535")
    timeout = _timeout(config)
    if timeout is None:
        raise _Unusable("the email timeout must be a positive number of seconds")
    options: dict[str, Any] = {
        "hostname": host,
        "port": port,
        "timeout": timeout,
        "use_tls": security == "tls",
        # True: STARTTLS or nothing (a server that doesn't offer it is refused); False: never.
        "start_tls": security == "starttls",
    }
    if security != "none":
        ca_file = config.get("ca_file")
        try:
            options["tls_context"] = ssl.create_default_context(cafile=ca_file if ca_file else None)
        except (OSError, ssl.SSLError, TypeError):
            raise _Unusable("the email ca_file can't be read as a PEM bundle") from None
    username, password = config.get("username"), config.get("password")
    if username is not None or password is not None:
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise _Unusable("the email username and password must both be strings")
        if security == "none":  # the password would cross the network in clear
            raise _Unusable("the email username and password need security starttls or tls")
        options["username"], options["password"] = username, password
    return options


def _address(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > 320 or not value.isprintable():
        return None
    _name, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>," for c in address):
        return None
    return address


def _build_message(delivery: DeliveryContext, config: Mapping[str, Any]) -> tuple[EmailMessage, str]:
    """The message of one delivery and its recipient address; raises _Unusable when there is none."""
    content = delivery.metadata
    sender = config.get("from")
    sender_address = _address(sender)
    if sender_address is None:
        raise _Unusable("the email channel needs a valid from address")
    recipient = _address(content.get("to")) or _address(delivery.recipient_identity)
    if recipient is None:
        raise _Unusable("no recipient address: the notification has no valid 'to'")
    subject, text, html = content.get("subject", ""), content.get("text"), content.get("html")
    if not isinstance(subject, str) or not subject.isprintable() or len(subject) > 998:
        raise _Unusable("the subject must be one line of text")
    bodies = [body for body in (text, html) if body is not None]
    if not bodies or not all(isinstance(b, str) and len(b) <= _MAX_TEXT for b in bodies):
        raise _Unusable("the notification needs a text or html body (strings of at most 1 MB)")
    domain = config.get("message_id_domain") or sender_address.rpartition("@")[2]
    if (
        not isinstance(domain, str)
        or not domain.isprintable()
        or any(c.isspace() or c in "<>@" for c in domain)
    ):
        raise _Unusable("the message_id_domain must be a domain name")
    message = EmailMessage()
    try:
        message["From"] = str(sender)
        message["To"] = recipient
        message["Subject"] = subject
        message["Message-ID"] = f"<{delivery.delivery_id}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"
        if isinstance(text, str):
            message.set_content(text)
            if isinstance(html, str):
                message.add_alternative(html, subtype="html")
        else:
            assert isinstance(html, str)
            message.set_content(html, subtype="html")
        Address(addr_spec=recipient)  # the email package's own check of the address
    except (ValueError, TypeError, IndexError):  # a header the email package refuses
        raise _Unusable("the message has a header or address that can't be encoded") from None
    return message, recipient
