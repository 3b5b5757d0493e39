"""Telemetry: named events with measurements and metadata, delivered to attached handlers.

Events are tuples such as ``("job", "start")``, ``("job", "stop")``, ``("job", "exception")``.
Handlers are called synchronously where the event happens; one that raises is detached after
logging once, so a broken handler can never break job execution.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Handler", "attach", "detach", "emit"]

Event = tuple[str, ...]
Handler = Callable[[Event, Mapping[str, float], Mapping[str, Any]], None]

_log = logging.getLogger("pgqueue.telemetry")
_handlers: dict[str, tuple[frozenset[Event] | None, Handler]] = {}
_lock = threading.Lock()


def attach(handler_id: str, handler: Handler, events: Iterable[Event] | None = None) -> None:
    """Call ``handler(event, measurements, metadata)`` for ``events`` (all when None)."""
    with _lock:
        _handlers[handler_id] = (frozenset(events) if events is not None else None, handler)


def detach(handler_id: str) -> None:
    with _lock:
        _handlers.pop(handler_id, None)


def emit(event: Event, measurements: Mapping[str, float], metadata: Mapping[str, Any]) -> None:
    if not _handlers:
        return
    for handler_id, (events, handler) in list(_handlers.items()):
        if events is not None and event not in events:
            continue
        try:
            handler(event, measurements, metadata)
        except Exception:
            _log.exception("telemetry handler %r failed and was detached", handler_id)
            detach(handler_id)
