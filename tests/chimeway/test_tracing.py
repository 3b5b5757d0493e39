"""Chimeway's telemetry as OpenTelemetry spans, under the caller's span, against a real database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import chimeway.tracing
from chimeway import deliveries, telemetry

from .conftest import TEMPORARY, MakeNotification, SessionFactory

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    chimeway.tracing.instrument(PROVIDER)
    yield EXPORTER
    chimeway.tracing.uninstrument()
    EXPORTER.clear()


def test_recording_an_attempt_is_a_span_under_the_callers_span(
    exporter: InMemorySpanExporter, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    session = new_session(expire_on_commit=False)
    delivery = deliveries.plan_delivery(session, make_notification(recipient="user:7"), "email")
    deliveries.transition_status(session, delivery, "dispatched")
    session.commit()

    with PROVIDER.get_tracer("app").start_as_current_span("dispatch") as parent:
        deliveries.record_attempt(session, delivery.id, TEMPORARY)
        session.commit()

    (span,) = [s for s in exporter.get_finished_spans() if s.name == "chimeway.attempts.record"]
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes is not None
    assert span.attributes["chimeway.delivery_id"] == str(delivery.id)
    assert span.attributes["chimeway.outcome"] == "failed"
    assert "user:7" not in str(dict(span.attributes))  # recipients stay out
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time > span.start_time


def test_an_exception_event_ends_its_span_with_an_error(exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError),
        telemetry.span(("chimeway", "events", "create"), {"notification_key": "k"}),
    ):
        raise RuntimeError("boom")

    (span,) = exporter.get_finished_spans()
    assert span.name == "chimeway.events.create"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["chimeway.notification_key"] == "k"


def test_uninstrument_stops_the_spans(exporter: InMemorySpanExporter) -> None:
    chimeway.tracing.uninstrument()
    with telemetry.span(("chimeway", "events", "create"), {}):
        pass
    assert exporter.get_finished_spans() == ()
