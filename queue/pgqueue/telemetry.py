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

__all__ = [
    "Handler",
    "JsonFormatter",
    "attach",
    "attach_default_logger",
    "detach",
    "emit",
    "has_handlers",
]

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


def has_handlers() -> bool:
    """Whether anyone listens: hot paths skip building event metadata when nobody does."""
    return bool(_handlers)


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


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and any structured fields.

    Structured fields are passed as ``extra={"fields": {...}}``; job arguments never are.
    """

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_JOB_EVENTS = (("job", "stop"), ("job", "exception"))


def attach_default_logger(level: int = logging.INFO, logger_name: str = "pgqueue.jobs") -> None:
    """Log one structured line per finished attempt: id, worker, queue, attempt, state, duration.

    Job args and meta are never logged: they may carry personal data.
    """
    job_log = logging.getLogger(logger_name)

    def handler(event: Event, measurements: Mapping[str, float], metadata: Mapping[str, Any]) -> None:
        fields = {
            "event": ".".join(event),
            "job_id": metadata.get("id"),
            "worker": metadata.get("worker"),
            "queue": metadata.get("queue"),
            "attempt": metadata.get("attempt"),
            "state": metadata.get("state"),
            "outcome": metadata.get("outcome"),
            "duration_us": int(measurements.get("duration", 0) * 1_000_000),
        }
        if event == ("job", "exception"):
            error = metadata.get("error")
            fields["error"] = type(error).__name__ if error is not None else None
        job_log.log(level, "job %s %s", fields["job_id"], fields["outcome"], extra={"fields": fields})

    attach("pgqueue-default-logger", handler, _JOB_EVENTS)
