"""Telemetry: handlers get events with allow-listed metadata only, and can't break the caller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from chimeway import telemetry

from .conftest import TelemetryEvent


def test_emit_passes_only_allow_listed_metadata(telemetry_events: list[TelemetryEvent]) -> None:
    telemetry.emit(
        ("chimeway", "test"),
        {"count": 1},
        {"delivery_id": "d-1", "channel": "email", "recipient_email": "a@example.com", "payload": {"x": 1}},
    )

    assert telemetry_events == [
        (("chimeway", "test"), {"count": 1}, {"delivery_id": "d-1", "channel": "email"})
    ]


def test_the_allow_list_is_the_reference_list() -> None:
    assert {
        "notification_key",
        "event_id",
        "recipient_id",
        "channel",
        "delivery_id",
        "attempt_id",
        "outcome",
        "suppression_reason",
        "planning_reason",
        "correlation_id",
        "attempt_number",
        "error_class",
        "adapter_module",
    } == telemetry.ALLOWED_METADATA


def test_a_detached_handler_hears_nothing_more() -> None:
    heard: list[tuple[str, ...]] = []

    def handler(
        event: tuple[str, ...], measurements: Mapping[str, int | float], metadata: Mapping[str, Any]
    ) -> None:
        heard.append(event)

    telemetry.attach(handler)
    telemetry.attach(handler)  # twice is once
    telemetry.emit(("chimeway", "one"), {}, {})
    assert telemetry.detach(handler) is True
    telemetry.emit(("chimeway", "two"), {}, {})

    assert heard == [("chimeway", "one")]
    assert telemetry.detach(handler) is False


def test_a_failing_handler_is_detached_and_logged_without_failing_the_emitter(
    caplog: pytest.LogCaptureFixture, telemetry_events: list[TelemetryEvent]
) -> None:
    calls = 0

    def broken(
        event: tuple[str, ...], measurements: Mapping[str, int | float], metadata: Mapping[str, Any]
    ) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    telemetry.attach(broken)
    telemetry.emit(("chimeway", "one"), {}, {})
    telemetry.emit(("chimeway", "two"), {}, {})

    assert calls == 1
    assert "failed on ('chimeway', 'one') and was detached" in caplog.text
    assert [event for event, _, _ in telemetry_events] == [("chimeway", "one"), ("chimeway", "two")]


def test_a_span_emits_exception_with_duration_when_its_body_raises(
    telemetry_events: list[TelemetryEvent],
) -> None:
    with pytest.raises(ValueError, match="bad"), telemetry.span(("chimeway", "work"), {"channel": "sms"}):
        raise ValueError("bad")

    assert [event[-1] for event, _, _ in telemetry_events] == ["start", "exception"]
    _, measurements, metadata = telemetry_events[-1]
    assert measurements["duration"] >= 0
    assert metadata == {"channel": "sms"}
