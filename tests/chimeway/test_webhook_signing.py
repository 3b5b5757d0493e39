"""Standard Webhooks: the published test vector, rotation, the replay window, and a receiver
process that verifies what the webhook adapter sends."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from chimeway.adapters import Delivered, DeliveryContext, Failed, WebhookAdapter
from chimeway.config import ConfigError, parse_settings
from chimeway.webhooks import WebhookVerificationError, generate_secret, parse_secrets, sign, verify

# The test vector published with the Standard Webhooks reference implementations.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    return headers | overrides


def test_signing_reproduces_the_published_test_vector() -> None:
    signature = sign(VECTOR_BODY, message_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, secret=VECTOR_SECRET)
    assert signature == VECTOR_SIGNATURE


def test_the_published_test_vector_verifies_within_the_window_and_names_its_id() -> None:
    verified = verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 299)
    assert (verified.message_id, verified.timestamp) == (VECTOR_ID, VECTOR_TIMESTAMP)
    # header names are matched whatever their case
    capitalised = {k.title(): v for k, v in vector_headers().items()}
    assert verify(VECTOR_BODY, capitalised, VECTOR_SECRET, now=VECTOR_TIMESTAMP).message_id == VECTOR_ID


@pytest.mark.parametrize("offset", [301, -301, 10_000_000])
def test_a_timestamp_outside_the_tolerance_is_refused_so_a_capture_cant_be_replayed(offset: int) -> None:
    with pytest.raises(WebhookVerificationError, match="outside the 300 s tolerance"):
        verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + offset)
    # a wider window is the receiver's choice
    verify(VECTOR_BODY, vector_headers(), VECTOR_SECRET, now=VECTOR_TIMESTAMP + 301, tolerance=600)


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        (b'{"test": 2432232315}', vector_headers(), "no webhook-signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-id": "msg_other"}), "no webhook-signature matches"),
        (VECTOR_BODY, vector_headers(**{"webhook-signature": "v1,bm9wZQ=="}), "no webhook-signature matches"),
        (
            VECTOR_BODY,
            vector_headers(**{"webhook-signature": "v1,not base64!"}),
            "no webhook-signature matches",
        ),
        (
            VECTOR_BODY,
            vector_headers(**{"webhook-signature": "v2," + VECTOR_SIGNATURE[3:]}),
            "no webhook-sig",
        ),
        (VECTOR_BODY, vector_headers(**{"webhook-timestamp": "16142653e0"}), "whole seconds since the epoch"),
        (VECTOR_BODY, vector_headers(**{"webhook-timestamp": "-1614265330"}), "whole seconds"),
        (VECTOR_BODY, vector_headers(**{"webhook-signature": "v1," + "A" * 5000}), "too long"),
        (
            VECTOR_BODY,
            {"webhook-id": VECTOR_ID, "webhook-timestamp": "1614265330"},
            "webhook-signature header is missing",
        ),
        (VECTOR_BODY, {"webhook-signature": VECTOR_SIGNATURE}, "webhook-id header is missing"),
        (VECTOR_BODY, {}, "header is missing"),
    ],
)
def test_tampered_unsigned_or_malformed_messages_are_refused(
    body: bytes, headers: dict[str, str], error: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, headers, VECTOR_SECRET, now=VECTOR_TIMESTAMP)


def test_during_rotation_both_secrets_sign_and_either_one_verifies() -> None:
    new = generate_secret()
    signature = sign(
        VECTOR_BODY, message_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, secret=[VECTOR_SECRET, new]
    )
    old_part, new_part = signature.split(" ")
    assert old_part == VECTOR_SIGNATURE
    headers = vector_headers(**{"webhook-signature": signature})
    for secret in (VECTOR_SECRET, new, [new, VECTOR_SECRET]):
        verify(VECTOR_BODY, headers, secret, now=VECTOR_TIMESTAMP)
    # a receiver holding only the new secret rejects a message signed with only the old one
    with pytest.raises(WebhookVerificationError):
        verify(VECTOR_BODY, vector_headers(), new, now=VECTOR_TIMESTAMP)
    assert new_part.startswith("v1,")


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must be a Standard Webhooks secret"),
        ("whsec_not*base64", "valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes, got 5"),
        ([], "1 to 10 secrets, got 0"),
        ([VECTOR_SECRET, "plain"], r"secret\[1\] must be a Standard Webhooks secret"),
        (42, "got a int"),
    ],
)
def test_a_bad_secret_is_refused_naming_the_field_and_never_quoting_it(secret: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        parse_secrets(secret)
    assert "not*base64" not in str(caught.value)
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in str(caught.value)


def test_the_worker_config_refuses_a_secret_that_is_not_in_the_standard_format() -> None:
    config = {"url": "http://127.0.0.1/hook", "secret": "old-plain-secret"}
    with pytest.raises(ConfigError, match=r"channels\.hooks\.config\.secret must be .*use legacy_secret"):
        parse_settings(
            {"channels": {"hooks": {"adapter": "webhook", "config": config}}}, {"DATABASE_URL": "x"}
        )
    fine = {"url": "http://127.0.0.1/hook", "secret": [VECTOR_SECRET], "legacy_secret": "old"}
    parse_settings({"channels": {"hooks": {"adapter": "webhook", "config": fine}}}, {"DATABASE_URL": "x"})


@pytest.fixture
def receiver() -> Iterator[tuple[str, str]]:
    """A receiver in a process of its own, verifying with a fresh secret: (url, secret)."""
    secret = generate_secret()
    script = Path(__file__).with_name("signed_receiver.py")
    process = subprocess.Popen(
        [sys.executable, str(script), secret], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = process.stdout.readline().strip()  # the process prints its port once it listens
    try:
        assert port.isdigit(), f"the receiver did not start: {port!r}"
        yield f"http://127.0.0.1:{port}/hooks", secret
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


def context(delivery_id: uuid.UUID, attempt_number: int) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=delivery_id,
        notification_id=uuid.uuid4(),
        channel="hooks",
        attempt_number=attempt_number,
        notification_key="comment_posted",
        recipient_identity="user:42",
        metadata={"subject": "Ünïcode ✓"},
    )


def deliver(delivery: DeliveryContext, config: dict[str, Any]) -> Delivered | Failed:
    return anyio.run(WebhookAdapter().deliver, delivery, config)


def test_a_receiver_process_verifies_what_the_adapter_signs_with_the_same_id_on_every_attempt(
    receiver: tuple[str, str],
) -> None:
    url, secret = receiver
    delivery_id = uuid.uuid4()
    for attempt in (1, 2):
        result = deliver(context(delivery_id, attempt), {"url": url, "secret": secret})
        # the receiver answers with the webhook-id it verified: the delivery id, on every attempt
        assert result == Delivered(
            {"adapter": "webhook", "status_code": 200, "provider_message_id": str(delivery_id)}
        )
    rotating = deliver(context(delivery_id, 3), {"url": url, "secret": [generate_secret(), secret]})
    assert isinstance(rotating, Delivered)


def test_a_receiver_with_another_secret_refuses_and_the_delivery_fails_for_good(
    receiver: tuple[str, str],
) -> None:
    url, _secret = receiver
    unsigned = deliver(context(uuid.uuid4(), 1), {"url": url})
    wrong = deliver(context(uuid.uuid4(), 1), {"url": url, "secret": generate_secret()})
    legacy_only = deliver(context(uuid.uuid4(), 1), {"url": url, "legacy_secret": "old"})
    for result in (unsigned, wrong, legacy_only):
        assert result == Failed("permanent", {"status_code": 401})


def test_an_unusable_secret_fails_the_delivery_for_good_without_sending(receiver: tuple[str, str]) -> None:
    url, _secret = receiver
    result = deliver(context(uuid.uuid4(), 1), {"url": url, "secret": "plain-old-secret"})
    assert result == Failed("permanent", {"error": "invalid_secret"})
