"""The adapter registry, the logger adapter, the test adapter and the context an adapter gets."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.adapters import (
    Delivered,
    DeliveryContext,
    Failed,
    LoggerAdapter,
    TestAdapter,
    WebhookAdapter,
    adapter_names,
    resolve_adapter,
)
from chimeway.errors import UnknownAdapter

from .conftest import TEMPORARY, MakeDelivery


def context(
    attempt_number: int = 1, channel: str = "email", delivery_id: uuid.UUID | None = None
) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=delivery_id or uuid.uuid4(),
        notification_id=uuid.uuid4(),
        channel=channel,
        attempt_number=attempt_number,
        notification_key="comment_posted",
        recipient_identity="user:42",
        metadata={"subject": "Private subject", "body": "Private body"},
    )


def test_the_registry_resolves_the_built_ins_by_name_with_logger_as_default() -> None:
    assert adapter_names() == ("logger", "test", "webhook", "email")
    assert isinstance(resolve_adapter(), LoggerAdapter)
    assert isinstance(resolve_adapter("test"), TestAdapter)
    assert isinstance(resolve_adapter("webhook"), WebhookAdapter)
    assert resolve_adapter("test") is resolve_adapter("test")


def test_the_registry_refuses_an_unknown_name_and_imports_nothing() -> None:
    with pytest.raises(
        UnknownAdapter, match="no adapter named 'os.system'; the adapters are 'logger', 'test'"
    ):
        resolve_adapter("os.system")


def test_the_logger_adapter_logs_one_line_with_channel_and_ids_but_no_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = context(channel="sms")

    with caplog.at_level(logging.INFO, logger="chimeway"):
        result = anyio.run(LoggerAdapter().deliver, delivery, {"token": "tok"})

    assert result == Delivered({"adapter": "logger", "logged": True})
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "sms" in record.getMessage()
    assert str(delivery.delivery_id) in record.getMessage()
    for private in ("Private", "user:42", "tok"):
        assert private not in caplog.text


def test_the_idempotency_key_is_the_delivery_and_attempt_number() -> None:
    delivery = context(attempt_number=3)

    assert delivery.idempotency_key == f"{delivery.delivery_id}:3"


def test_the_context_numbers_the_next_attempt_as_it_will_be_recorded(
    sa_session: Session, make_delivery: MakeDelivery
) -> None:
    delivery_id = make_delivery("dispatched")
    first = deliveries.delivery_context(sa_session, delivery_id)
    sa_session.commit()
    recorded = deliveries.record_attempt(sa_session, delivery_id, TEMPORARY)

    second = deliveries.delivery_context(sa_session, delivery_id)

    assert first.attempt_number == recorded.attempt.attempt_number == 1
    assert second.attempt_number == 2
    assert (second.channel, second.recipient_identity, second.notification_key) == (
        "in_app",
        "user:42",
        "comment_posted",
    )
    assert second.metadata == {"subject": "New comment", "body": "Nice post!"}


def test_the_test_adapter_returns_scripts_per_delivery_first_then_global_then_the_default(
    test_adapter: TestAdapter,
) -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    test_adapter.script(Failed("bounced"), delivery_id=mine)
    test_adapter.script(Failed("temporary"), Failed("permanent"))

    results = [
        test_adapter.deliver(context(delivery_id=mine), {}),
        test_adapter.deliver(context(delivery_id=mine), {}),
        test_adapter.deliver(context(delivery_id=other), {}),
        test_adapter.deliver(context(delivery_id=other), {}),
    ]

    assert results == [
        Failed("bounced"),
        Failed("temporary"),
        Failed("permanent"),
        Delivered({"adapter": "test"}),
    ]
    assert len(test_adapter.calls()) == 4
    assert [d.delivery_id for d in test_adapter.deliveries()] == [other]


def test_the_test_adapter_default_can_be_an_outage_and_scripts_can_raise_or_be_malformed(
    test_adapter: TestAdapter,
) -> None:
    test_adapter.set_default(Failed("temporary"))
    test_adapter.script(ConnectionError("reset"), ("error", "throttled"))

    with pytest.raises(ConnectionError, match="reset"):
        test_adapter.deliver(context(), {})
    assert test_adapter.deliver(context(), {}) == ("error", "throttled")
    assert test_adapter.deliver(context(), {}) == Failed("temporary")


def test_assert_delivered_matches_by_field_and_counts(test_adapter: TestAdapter) -> None:
    sent = context(channel="email")
    test_adapter.deliver(sent, {"url": "x"})
    test_adapter.deliver(sent, {})

    assert test_adapter.assert_delivered(delivery_id=sent.delivery_id, channel="email", times=2) == sent
    assert test_adapter.calls()[0].config == {"url": "x"}
    with pytest.raises(AssertionError, match="expected a delivery matching {'channel': 'sms'}, got 0"):
        test_adapter.assert_delivered(channel="sms")
    with pytest.raises(AssertionError, match="expected 1 deliveries"):
        test_adapter.assert_delivered(channel="email", times=1)


def test_clear_forgets_calls_scripts_and_default(test_adapter: TestAdapter) -> None:
    test_adapter.script(Failed("permanent"))
    test_adapter.set_default(Failed("temporary"))
    test_adapter.deliver(context(), {})

    test_adapter.clear()

    assert test_adapter.calls() == []
    assert test_adapter.deliver(context(), {}) == Delivered({"adapter": "test"})


def test_the_test_adapter_hands_each_scripted_result_to_exactly_one_of_many_threads(
    test_adapter: TestAdapter,
) -> None:
    scripted = [Delivered({"n": n}) for n in range(400)]
    test_adapter.script(*scripted)
    test_adapter.set_default(Failed("permanent"))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: test_adapter.deliver(context(), {}), range(400)))

    assert sorted(r.meta["n"] for r in results if isinstance(r, Delivered)) == list(range(400))
    assert len(test_adapter.calls()) == 400
