"""Every built-in adapter keeps the adapter contract (chimeway.testing.AdapterContract), against
real receivers: an HTTP server for the webhook adapter, an SMTP server for the email adapter."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from chimeway.adapters import (
    Delivered,
    DeliveryContext,
    EmailAdapter,
    Failed,
    LoggerAdapter,
    TestAdapter,
    WebhookAdapter,
)
from chimeway.adapters.base import Adapter
from chimeway.states import FailureKind
from chimeway.testing import AdapterContract, ScriptedWebhookServer
from chimeway.webhooks import generate_secret

from .smtp_server import RunningServer, smtp_server


class TestLoggerAdapterContract(AdapterContract):
    def make_adapter(self) -> Adapter:
        return LoggerAdapter()


class TestTestAdapterContract(AdapterContract):
    failure_kinds: tuple[FailureKind, ...] = ("temporary", "permanent", "bounced")

    @pytest.fixture(autouse=True)
    def _adapter(self) -> None:
        self.adapter = TestAdapter()

    def make_adapter(self) -> Adapter:
        return self.adapter

    def failure_config(self, kind: FailureKind) -> Mapping[str, Any]:
        self.adapter.set_default(Failed(kind, {"reason": "scripted"}))
        return {}


WEBHOOK_STATUSES = {"ok": 200, "temporary": 503, "permanent": 400, "bounced": 410}


@pytest.fixture(scope="module")
def webhook_receivers() -> Iterator[dict[str, ScriptedWebhookServer]]:
    servers = {
        name: ScriptedWebhookServer(default=status).start() for name, status in WEBHOOK_STATUSES.items()
    }
    yield servers
    for server in servers.values():
        server.stop()


class TestWebhookAdapterContract(AdapterContract):
    failure_kinds: tuple[FailureKind, ...] = ("temporary", "permanent", "bounced")
    secret = generate_secret()

    @pytest.fixture(autouse=True)
    def _receivers(self, webhook_receivers: dict[str, ScriptedWebhookServer]) -> None:
        self.receivers = webhook_receivers

    def make_adapter(self) -> Adapter:
        return WebhookAdapter()

    def config(self, receiver: str) -> dict[str, Any]:
        url = self.receivers[receiver].url
        return {"url": url, "secret": self.secret, "token": "contract-token-123", "timeout": 15}

    def success_config(self) -> Mapping[str, Any]:
        return self.config("ok")

    def failure_config(self, kind: FailureKind) -> Mapping[str, Any]:
        return self.config(kind)


@pytest.fixture(scope="module")
def smtp() -> Iterator[RunningServer]:
    with smtp_server("plain") as server:
        yield server


class TestEmailAdapterContract(AdapterContract):
    failure_kinds: tuple[FailureKind, ...] = ("temporary", "permanent", "bounced")
    senders = {"temporary": "later-all", "permanent": "reject-all", "bounced": "bounce-all"}

    @pytest.fixture(autouse=True)
    def _server(self, smtp: RunningServer) -> None:
        self.server = smtp

    def make_adapter(self) -> Adapter:
        return EmailAdapter()

    def config(self, sender: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.server.port,
            "security": "none",
            "from": f"{sender}@acme.test",
            "timeout": 15,
        }

    def success_config(self) -> Mapping[str, Any]:
        return self.config("notify")

    def failure_config(self, kind: FailureKind) -> Mapping[str, Any]:
        return self.config(self.senders[kind])


# The kit itself must catch a broken adapter: each of these breaks one clause of the contract.


class _Leaky:
    name = "leaky"

    async def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
        if not config:
            raise KeyError("url")  # raises on a config that can't work instead of answering
        logging.getLogger("leaky").debug("sending with %s", config.get("api_key"))
        if config.get("fail"):
            return Failed("temporary", {"to": delivery.metadata["to"]})  # the address in the detail
        return Delivered({"provider_message_id": "m\n1", "auth_header": "Bearer x"})  # a sensitive key


class _LeakyContract(AdapterContract):
    failure_kinds: tuple[FailureKind, ...] = ("permanent",)

    def make_adapter(self) -> Adapter:
        return _Leaky()

    def success_config(self) -> Mapping[str, Any]:
        return {"api_key": "leaked-key-123"}

    def failure_config(self, kind: FailureKind) -> Mapping[str, Any]:
        return {"fail": True}


@pytest.mark.parametrize(
    ("check", "complaint"),
    [
        (
            "test_a_successful_send_returns_delivered_with_a_small_redacted_meta",
            "redaction policy drops",
        ),
        (
            "test_each_declared_failure_has_its_kind_and_a_small_detail_without_secrets_or_address",
            "gave a 'temp",
        ),
        ("test_a_configuration_that_can_never_work_is_answered_not_raised", "url"),
    ],
)
def test_the_kit_catches_an_adapter_that_breaks_the_contract(check: str, complaint: str) -> None:
    with pytest.raises((AssertionError, KeyError), match=complaint):
        getattr(_LeakyContract(), check)()


def test_the_kit_catches_a_secret_in_the_logs_and_a_sensitive_key_in_the_meta() -> None:
    class Logs(_LeakyContract):
        def success_config(self) -> Mapping[str, Any]:
            return {"api_key": "leaked-key-123"}

    contract = Logs()
    result, lines = contract._send_one(contract.success_config())
    assert any("leaked-key-123" in line for line in lines)
    with pytest.raises(AssertionError, match="carries a secret of the config"):
        contract._assert_no_secret("\n".join(lines), contract.success_config(), "a log line")
    assert isinstance(result, Delivered)
    with pytest.raises(AssertionError, match="keys the redaction policy drops"):
        contract._assert_small_json(result.meta, "Delivered.meta")
