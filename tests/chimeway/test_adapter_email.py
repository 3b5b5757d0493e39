"""The email adapter against a real SMTP server (aiosmtpd) on 127.0.0.1: plain, STARTTLS with AUTH
and a self-signed certificate, implicit TLS; every reply class; a hang and a drop mid-DATA."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from chimeway import Notifier, Recipient, dispatch, explain_delivery, trigger
from chimeway.adapters import Delivered, DeliveryContext, EmailAdapter, Failed, classify, resolve_adapter
from pgqueue.testing import drain_queue

from .smtp_server import PASSWORD, USERNAME, RunningServer, smtp_server

SENDER = "Acme Notifications <notify@acme.test>"


@pytest.fixture(scope="module")
def plain() -> Iterator[RunningServer]:
    with smtp_server("plain") as server:
        yield server


@pytest.fixture
def server(plain: RunningServer) -> RunningServer:
    plain.handler.messages.clear()
    return plain


def context(
    to: str, *, attempt: int = 1, delivery_id: uuid.UUID | None = None, **content: Any
) -> DeliveryContext:
    metadata: dict[str, Any] = {"to": to, "subject": "Your order shipped", "text": "It's on its way."}
    metadata.update(content)
    return DeliveryContext(
        delivery_id=delivery_id or uuid.uuid4(),
        notification_id=uuid.uuid4(),
        channel="email",
        attempt_number=attempt,
        notification_key="order_shipped",
        recipient_identity="user:42",
        metadata={k: v for k, v in metadata.items() if v is not None},
    )


def plain_config(server: RunningServer, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "from": SENDER,
        "timeout": 15,
    } | extra


def deliver(delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
    return anyio.run(EmailAdapter().deliver, delivery, config)


def test_a_message_with_a_non_ascii_subject_and_an_html_body_with_a_text_alternative_arrives(
    server: RunningServer,
) -> None:
    delivery = context(
        "ana@example.test",
        subject="Ihre Bestellung ist unterwegs 🚚 — Ünïcödé",
        text="Bonjour Ana, c'est expédié.",
        html="<p>Bonjour <b>Ana</b>, c'est expédié.</p>",
    )

    result = deliver(delivery, plain_config(server))

    message_id = f"<{delivery.delivery_id}@acme.test>"
    assert result == Delivered({"adapter": "email", "smtp_code": 250, "provider_message_id": message_id})
    assert classify(result).provider_message_id == message_id
    (received,) = server.handler.messages
    assert (received.envelope_from, received.envelope_to) == ("notify@acme.test", ["ana@example.test"])
    message = received.message
    assert message["Subject"] == "Ihre Bestellung ist unterwegs 🚚 — Ünïcödé"
    assert message["Message-ID"] == message_id
    assert message.get_content_type() == "multipart/alternative"
    parts = [(part.get_content_type(), part.get_content().strip()) for part in message.iter_parts()]
    assert parts == [
        ("text/plain", "Bonjour Ana, c'est expédié."),
        ("text/html", "<p>Bonjour <b>Ana</b>, c'est expédié.</p>"),
    ]
    raw_subject = message.as_bytes().split(b"Subject:", 1)[1].split(b"\n", 1)[0]
    assert raw_subject.isascii(), "encoded as the RFC says, not raw UTF-8"


def test_an_html_only_body_and_an_address_identity_are_enough(server: RunningServer) -> None:
    delivery = DeliveryContext(
        uuid.uuid4(), uuid.uuid4(), "email", 1, "k", "bo@example.test", {"subject": "Hi", "html": "<p>Hi</p>"}
    )
    assert isinstance(deliver(delivery, plain_config(server)), Delivered)
    (received,) = server.handler.messages
    assert received.envelope_to == ["bo@example.test"]
    assert received.message.get_content_type() == "text/html"


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("bounce@example.test", Failed("bounced", {"error": "recipient_refused", "smtp_code": 550})),
        ("busy@example.test", Failed("temporary", {"error": "recipient_refused", "smtp_code": 451})),
        ("reject@example.test", Failed("permanent", {"error": "message_refused", "smtp_code": 554})),
        ("later@example.test", Failed("temporary", {"error": "message_refused", "smtp_code": 452})),
    ],
)
def test_4xx_is_temporary_5xx_to_the_recipient_bounced_other_5xx_permanent(
    server: RunningServer, to: str, expected: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert deliver(context(to), plain_config(server)) == expected
    assert server.handler.messages == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("chimeway", "aiosmtplib"))]
    assert ours, "the outcome is logged"
    assert not [line for line in ours if to in line], "the address (and the reply quoting it) is not"


def test_a_server_that_hangs_after_the_data_is_a_temporary_timeout(server: RunningServer) -> None:
    result = deliver(context("hang@example.test"), plain_config(server, timeout=3))
    assert result == Failed("temporary", {"error": "timeout", "timeout": 3.0, "stage": "send"})


def test_a_drop_mid_data_is_temporary_and_the_retry_carries_the_same_message_id(
    server: RunningServer,
) -> None:
    delivery_id = uuid.uuid4()
    first = deliver(
        context("drop-once@example.test", delivery_id=delivery_id, attempt=1), plain_config(server)
    )
    second = deliver(
        context("drop-once@example.test", delivery_id=delivery_id, attempt=2), plain_config(server)
    )

    assert isinstance(first, Failed)
    assert (first.kind, first.detail["error"]) == ("temporary", "connection_failed")
    assert isinstance(second, Delivered)
    ids = [received.message["Message-ID"] for received in server.handler.messages]
    assert ids == [f"<{delivery_id}@acme.test>"] * 2, "a receiver can drop the second copy by its id"


def test_a_server_that_accepts_the_data_then_never_answers_quit_still_delivered_it(
    server: RunningServer,
) -> None:
    result = deliver(context("quit-hang@example.test"), plain_config(server, timeout=15))
    assert isinstance(result, Delivered), "a lost goodbye must not make the message be sent again"
    assert len(server.handler.messages) == 1


def test_an_unreachable_server_is_temporary() -> None:
    from .smtp_server import free_port

    config = {"host": "127.0.0.1", "port": free_port(), "security": "none", "from": SENDER, "timeout": 15}
    result = deliver(context("ana@example.test"), config)
    assert isinstance(result, Failed)
    assert (result.kind, result.detail["error"]) == ("temporary", "connection_failed")


def test_starttls_with_a_private_ca_and_auth(tmp_path: Path) -> None:
    with smtp_server("starttls", tmp_path) as server:
        config = {
            "host": "127.0.0.1",
            "port": server.port,
            "security": "starttls",
            "ca_file": server.ca_file,
            "username": USERNAME,
            "password": PASSWORD,
            "from": SENDER,
            "timeout": 15,
        }
        assert isinstance(deliver(context("ana@example.test"), config), Delivered)
        (received,) = server.handler.messages
        assert received.authenticated_as == USERNAME

        wrong_password = deliver(context("ana@example.test"), config | {"password": "nope"})
        assert wrong_password == Failed("permanent", {"error": "login_refused", "smtp_code": 535})

        untrusted = deliver(context("ana@example.test"), config | {"ca_file": None})
        assert isinstance(untrusted, Failed)
        assert (untrusted.kind, untrusted.detail["error"]) == ("temporary", "connection_failed")

        plain = {k: v for k, v in config.items() if k not in ("username", "password")} | {"security": "none"}
        no_tls = deliver(context("ana@example.test"), plain)
        assert isinstance(no_tls, Failed)
        assert (no_tls.kind, no_tls.detail.get("smtp_code")) == ("permanent", 530), "STARTTLS required first"
        assert len(server.handler.messages) == 1


def test_implicit_tls(tmp_path: Path) -> None:
    with smtp_server("tls", tmp_path) as server:
        config = {
            "host": "127.0.0.1",
            "port": server.port,
            "security": "tls",
            "ca_file": server.ca_file,
            "from": SENDER,
            "timeout": 15,
        }
        assert isinstance(deliver(context("ana@example.test"), config), Delivered)
        assert len(server.handler.messages) == 1


@pytest.mark.parametrize(
    ("config", "delivery", "error"),
    [
        ({"from": SENDER}, context("a@example.test"), "the email channel has no host configured"),
        ({"host": "h"}, context("a@example.test"), "the email channel needs a valid from address"),
        ({"host": "h", "from": SENDER, "security": "ssl"}, context("a@x.test"), "starttls, tls or none"),
        ({"host": "h", "from": SENDER, "port": 0}, context("a@x.test"), "from 1 to 65535"),
        ({"host": "h", "from": SENDER, "timeout": -1}, context("a@x.test"), "positive number of seconds"),
        ({"host": "h", "from": SENDER}, context("not-an-address"), "no recipient address"),
        ({"host": "h", "from": SENDER}, context("a@x.test\r\nBcc: evil@x.test"), "no recipient address"),
        ({"host": "h", "from": SENDER}, context("a@x.test", subject="Hi\r\nBcc: e@x.test"), "one line"),
        ({"host": "h", "from": SENDER}, context("a@x.test", text=None), "needs a text or html body"),
        ({"host": "h", "from": SENDER, "username": "u"}, context("a@x.test"), "username and password"),
        (
            {"host": "h", "from": SENDER, "security": "none", "username": "u", "password": "p"},
            context("a@x.test"),
            "need security starttls or tls",
        ),
    ],
)
def test_a_configuration_or_content_that_can_never_work_is_permanent_without_connecting(
    config: dict[str, Any], delivery: DeliveryContext, error: str
) -> None:
    result = deliver(delivery, config)
    assert isinstance(result, Failed)
    assert result.kind == "permanent"
    assert error in result.detail["error"]


def test_the_password_never_reaches_the_result_or_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with smtp_server("starttls", tmp_path) as server, caplog.at_level(logging.DEBUG):
        config = {"host": "127.0.0.1", "port": server.port, "ca_file": server.ca_file, "from": SENDER}
        result = deliver(context("ana@example.test"), config | {"username": USERNAME, "password": PASSWORD})
    assert isinstance(result, Delivered)
    assert PASSWORD not in repr(classify(result))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("chimeway", "aiosmtplib")))
    assert "accepted" in ours
    assert PASSWORD not in ours


def test_email_is_a_built_in_adapter_with_a_deadline_from_its_timeout() -> None:
    adapter = resolve_adapter("email")
    assert isinstance(adapter, EmailAdapter)
    assert adapter.attempt_timeout({"timeout": 4}) == 5.0


class Shipped(Notifier):
    notification_key = "order_shipped"

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient("user:7")]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> list[str]:
        return ["email"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> dict[str, Any]:
        return {"to": params["to"], "subject": "Votre commande est partie", "text": "En route."}


@pytest.mark.system
def test_through_the_queue_a_drop_mid_data_is_retried_and_explained_under_one_message_id(
    server: RunningServer, sa_engine: Engine, dsn: str, schema: str
) -> None:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    routes = {"email": dispatch.ChannelRoute(EmailAdapter(), plain_config(server))}
    dispatch.configure(dispatch.Dispatcher(dsn, schema=schema, routes=routes, retry_backoff=0.01))
    try:
        with Session(engine) as session:
            result = trigger(
                session,
                Shipped(),
                {"to": "drop-once@example.test"},
                idempotency_key="o-1",
                queue_schema=schema,
            )
            session.commit()
        drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True, with_recursion=True)
    finally:
        dispatch.configure(None)

    (delivery_id,) = result.delivery_ids
    with Session(engine) as session:
        story = explain_delivery(session, delivery_id)
    message_id = f"<{delivery_id}@acme.test>"
    assert story.status == "succeeded"
    assert [(a.number, a.outcome, a.error_class) for a in story.attempts] == [
        (1, "failed", "temporary"),
        (2, "succeeded", None),
    ]
    assert story.attempts[1].provider_message_id == message_id
    assert [r.message["Message-ID"] for r in server.handler.messages] == [message_id, message_id]


def test_the_worker_config_names_a_missing_email_setting() -> None:
    from chimeway.config import ConfigError, parse_settings

    def channels(config: dict[str, Any]) -> dict[str, Any]:
        return {"channels": {"mail": {"adapter": "email", "config": config}}}

    with pytest.raises(ConfigError, match=r"channels\.mail\.config\.host is required for the email adapter"):
        parse_settings(channels({"from": SENDER}), {"DATABASE_URL": "x"})
    with pytest.raises(ConfigError, match=r"channels\.mail\.config\.security must be starttls, tls or none"):
        parse_settings(channels({"host": "h", "from": SENDER, "security": "ssl"}), {"DATABASE_URL": "x"})
    with pytest.raises(ConfigError, match=r"channels\.mail\.config\.username and password need security"):
        parse_settings(
            channels({"host": "h", "from": SENDER, "security": "none", "username": "u", "password": "p"}),
            {"DATABASE_URL": "x"},
        )
    settings = parse_settings(channels({"host": "h", "from": SENDER}), {"DATABASE_URL": "x"})
    assert settings.channels["mail"].adapter == "email"
