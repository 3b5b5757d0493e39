"""Hook metrics and tracing into chimeway: ``attach(handler)`` and receive its events.

An event is a name tuple such as ``("chimeway", "attempts", "record", "stop")``, a mapping of
measurements (``duration`` in nanoseconds, …) and a mapping of metadata. Metadata only ever
carries the keys in :data:`ALLOWED_METADATA` — ids, channel, outcome and the like, never content
or recipients' data — whatever the caller passes to :func:`emit`.

A handler that raises is detached and logged once (as Erlang's ``:telemetry`` does), so a broken
metrics hook can never fail a delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

__all__ = [
    "ALLOWED_METADATA",
    "EventName",
    "Handler",
    "attach",
    "detach",
    "emit",
    "has_handlers",
    "safe_metadata",
    "span",
]

EventName = tuple[str, ...]
Handler = Callable[[EventName, Mapping[str, int | float], Mapping[str, Any]], None]

ALLOWED_METADATA: Final = frozenset(
    {
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
    }
)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_handlers: tuple[Handler, ...] = ()


def attach(handler: Handler) -> None:
    """Call ``handler(event, measurements, metadata)`` for every event; attaching twice is a no-op."""
    global _handlers
    with _lock:
        if handler not in _handlers:
            _handlers = (*_handlers, handler)


def detach(handler: Handler) -> bool:
    """Stop calling ``handler``; returns whether it was attached."""
    global _handlers
    with _lock:
        if handler not in _handlers:
            return False
        _handlers = tuple(h for h in _handlers if h != handler)
        return True


def has_handlers() -> bool:
    """Whether any handler is attached: hot paths build an event's metadata only when one is."""
    return bool(_handlers)


def safe_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The allow-listed part of ``metadata``; everything else is dropped."""
    return {key: value for key, value in metadata.items() if key in ALLOWED_METADATA}


def emit(event: EventName, measurements: Mapping[str, int | float], metadata: Mapping[str, Any]) -> None:
    """Send one event to every attached handler, with only the allow-listed metadata keys."""
    handlers = _handlers  # a snapshot: handlers may attach or detach while we iterate
    if not handlers:
        return
    safe = safe_metadata(metadata)
    for handler in handlers:
        try:
            handler(event, dict(measurements), dict(safe))
        except Exception:
            detach(handler)
            _log.exception("telemetry handler %r failed on %s and was detached", handler, event)


@contextmanager
def span(prefix: EventName, metadata: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Emit ``prefix + ("start",)``, then ``("stop",)`` or ``("exception",)`` with a duration.

    Yields a dict the body may add metadata to; the stop event carries it.
    """
    meta = dict(metadata)
    emit((*prefix, "start"), {"system_time": time.time_ns()}, meta)
    started = time.monotonic_ns()
    try:
        yield meta
    except BaseException:
        emit((*prefix, "exception"), {"duration": time.monotonic_ns() - started}, meta)
        raise
    emit((*prefix, "stop"), {"duration": time.monotonic_ns() - started}, meta)
