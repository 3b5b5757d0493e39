"""OpenTelemetry spans for Chimeway's work, from its telemetry events (the ``otel`` extra).

``chimeway.tracing.instrument()`` turns every ``(…, "stop")`` and ``(…, "exception")`` event of
Chimeway into a span named after the event (``chimeway.attempts.record``,
``chimeway.deliveries.plan``, ``chimeway.events.create``), timed by the event's ``duration``,
under whatever span is current: the request that triggered, or pgqueue's ``pgqueue.perform``
span of the dispatch job when :func:`pgqueue.tracing.instrument` is on too. Attributes are the
event's allow-listed metadata, prefixed ``chimeway.`` (ids, channel, outcome, never content); see
``docs/telemetry.md``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from . import __version__, telemetry

__all__ = ["instrument", "uninstrument"]

_ENDINGS = frozenset({"stop", "exception"})
_handler: telemetry.Handler | None = None


def _attribute(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str | bool | int | float):
        return value
    return None if value is None else str(value)


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace Chimeway's work in this process (again: replaces the previous setup)."""
    global _handler
    uninstrument()
    tracer = trace.get_tracer("chimeway", __version__, tracer_provider)

    def handler(
        event: tuple[str, ...], measurements: Mapping[str, int | float], metadata: Mapping[str, Any]
    ) -> None:
        if event[0] != "chimeway" or event[-1] not in _ENDINGS or "duration" not in measurements:
            return
        ended = time.time_ns()
        attributes = {
            f"chimeway.{key}": value
            for key, value in ((k, _attribute(v)) for k, v in metadata.items())
            if value is not None
        }
        span = tracer.start_span(
            ".".join(event[:-1]), start_time=ended - int(measurements["duration"]), attributes=attributes
        )
        if event[-1] == "exception":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=ended)

    _handler = handler
    telemetry.attach(handler)


def uninstrument() -> None:
    """Stop tracing Chimeway's work in this process."""
    global _handler
    if _handler is not None:
        telemetry.detach(_handler)
        _handler = None
