"""classify() and redact(): every result shape becomes a valid attempt, and no secret is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chimeway.adapters import Delivered, Failed, classify, redact
from chimeway.deliveries import AttemptOutcome


def test_a_success_is_succeeded_with_its_meta_and_provider_message_id() -> None:
    result = classify(Delivered({"provider_message_id": "msg-1", "queued": True}))

    assert result == ("succeeded", None, {"provider_message_id": "msg-1", "queued": True}, "msg-1")
    assert result.provider_message_id == "msg-1"


def test_a_numeric_provider_message_id_is_stored_as_text() -> None:
    assert classify(Delivered({"provider_message_id": 42})).provider_message_id == "42"
    assert classify(Delivered({"provider_message_id": True})).provider_message_id is None


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [("temporary", "failed"), ("permanent", "rejected"), ("bounced", "bounced")],
)
def test_each_failure_kind_becomes_its_outcome_and_error_class(kind: Any, outcome: str) -> None:
    result = classify(Failed(kind, {"status_code": 503, "secret": "s"}))

    assert result == (outcome, kind, {"status_code": 503}, None)


@pytest.mark.parametrize(
    "result",
    [
        Failed("throttled", {"status_code": 429}),  # type: ignore[arg-type]
        None,
        "ok",
        ("error", "temporary", {}),
        {"ok": True},
        RuntimeError("boom"),
        Delivered,
    ],
    ids=["unknown-kind", "none", "string", "tuple", "dict", "exception", "class"],
)
def test_any_other_value_is_rejected_as_unknown_classification_with_an_empty_response(result: object) -> None:
    assert classify(result) == ("rejected", "unknown_classification", {}, None)


@pytest.mark.parametrize(
    "result",
    [Delivered({"a": 1}), Failed("temporary"), Failed("permanent"), Failed("bounced"), object()],
)
def test_every_classification_makes_a_valid_attempt(result: object) -> None:
    outcome = AttemptOutcome(*classify(result), adapter="test")

    assert outcome.adapter == "test"


def test_a_response_is_made_storable_as_jsonb() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)

    response = classify(
        Delivered({"at": at, "ratio": float("nan"), "tags": ("a", "b"), 3: "three"})
    ).provider_response

    assert response == {"at": str(at), "ratio": "nan", "tags": ["a", "b"], "3": "three"}


def test_a_delivered_with_a_non_mapping_meta_still_succeeds_with_an_empty_response() -> None:
    assert classify(Delivered(["not", "a", "dict"])) == ("succeeded", None, {}, None)  # type: ignore[arg-type]


def test_redact_drops_password_token_and_secret_at_any_depth_whatever_their_case() -> None:
    original = {
        "Password": "p",
        "TOKEN": "t",
        "id": 1,
        "nested": {"secret": "s", "kept": {"Token": "t2", "value": 2}},
        "items": [{"password": "p3", "name": "x"}, "plain"],
        "access_token": "a",  # matched inside longer names too (chimeway.redaction)
    }

    redacted = redact(original)

    assert redacted == {
        "id": 1,
        "nested": {"kept": {"value": 2}},
        "items": [{"name": "x"}, "plain"],
    }
    assert original["nested"]["secret"] == "s"  # the input is left as it was


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("msg\x00id", None),
        ("line\nbreak", None),
        ("\udcff", None),
        ("", None),
        ("ok-1", "ok-1"),
        ("é" * 255, "é" * 255),
    ],
)
def test_a_provider_message_id_with_control_characters_is_refused(value: str, stored: str | None) -> None:
    assert classify(Delivered({"provider_message_id": value})).provider_message_id == stored


def test_a_provider_message_id_longer_than_255_characters_is_stored_as_its_hash() -> None:
    import hashlib

    long = "x" * 10_000
    stored = classify(Delivered({"provider_message_id": long})).provider_message_id
    assert stored == "sha256:" + hashlib.sha256(long.encode()).hexdigest()


def test_a_response_is_cleaned_of_nul_and_surrogates_and_bounded_without_changing_the_outcome() -> None:
    deep: Any = "bottom"
    for _ in range(10_000):
        deep = [deep]
    result = classify(
        Delivered({"note": "a\x00b", "odd": "\udcff", "long": "y" * 5_000, "deep": deep, "big": 2**70})
    )

    assert result.outcome == "succeeded"
    response = result.provider_response
    assert response["note"] == "a\ufffdb"
    assert response["odd"] == "?"
    assert len(response["long"]) == 2_001
    assert response["big"] == str(2**70)
    depth, node = 0, response["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth < 20


def test_a_response_that_cannot_be_read_at_all_is_dropped_and_the_outcome_stands() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert classify(Delivered({"thing": Unprintable()})) == ("succeeded", None, {}, None)
    assert classify(Failed("permanent", {"thing": Unprintable()})) == ("rejected", "permanent", {}, None)
