"""One event's notifications, deliveries and attempts, read in one statement: ``load_event_trace``.

This is what ``python -m chimeway trace <event_id>`` prints. It reads only the durable rows
(``chimeway/queries/event_trace.sql``), so it tells the same story whatever logs were kept.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg

from .errors import ChimewayError, InvalidValue
from .store import queries_for

__all__ = [
    "MAX_TRACE_NOTIFICATIONS",
    "AttemptTrace",
    "DeliveryTrace",
    "EventNotFound",
    "EventTrace",
    "NotificationTrace",
    "load_event_trace",
]

#: The most notifications one trace shows (an event may fan out to 100,000 recipients).
MAX_TRACE_NOTIFICATIONS: Final = 10_000


class EventNotFound(ChimewayError, LookupError):
    """No event has the given id."""

    def __init__(self, event_id: object) -> None:
        super().__init__(f"no event with id {str(event_id)!r}")
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class AttemptTrace:
    number: int
    outcome: str
    error_class: str | None
    adapter: str | None
    provider_message_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryTrace:
    delivery_id: uuid.UUID
    channel: str
    status: str
    suppression_reason: str | None
    attempts: list[AttemptTrace] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NotificationTrace:
    notification_id: uuid.UUID
    recipient: str
    read_at: datetime | None
    deliveries: list[DeliveryTrace] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EventTrace:
    """An event and, oldest first, up to ``limit`` of its notifications with their deliveries."""

    event_id: uuid.UUID
    notification_key: str
    correlation_id: str | None
    inserted_at: datetime
    notifications: list[NotificationTrace] = field(default_factory=list)
    #: True when the event has more notifications than the trace holds
    truncated: bool = False


def _event_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidValue("event_id", value, "a UUID") from None


def load_event_trace(
    conn: psycopg.Connection[Any], event_id: uuid.UUID | str, *, schema: str = "public", limit: int = 100
) -> EventTrace:
    """The trace of ``event_id`` in ``schema``; raises EventNotFound when there is no such event."""
    key = _event_id(event_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TRACE_NOTIFICATIONS:
        raise InvalidValue("limit", limit, f"an integer from 1 to {MAX_TRACE_NOTIFICATIONS}")
    # One more than asked, to tell whether the trace is complete.
    rows = conn.execute(queries_for(schema).event_trace, {"event_id": key, "limit": limit + 1}).fetchall()
    if not rows:
        raise EventNotFound(event_id)
    first = rows[0]
    trace = EventTrace(first[0], first[1], first[2], first[3])
    notifications: dict[uuid.UUID, NotificationTrace] = {}
    found: dict[uuid.UUID, DeliveryTrace] = {}
    for row in rows:
        notification_id = row[4]
        if notification_id is None:
            continue
        notification = notifications.get(notification_id)
        if notification is None:
            if len(notifications) == limit:
                return _truncated(trace)
            notification = notifications[notification_id] = NotificationTrace(notification_id, row[5], row[6])
            trace.notifications.append(notification)
        delivery_id = row[7]
        if delivery_id is None:
            continue
        delivery = found.get(delivery_id)
        if delivery is None:
            delivery = found[delivery_id] = DeliveryTrace(delivery_id, row[8], row[9], row[10])
            notification.deliveries.append(delivery)
        if row[11] is not None:
            delivery.attempts.append(AttemptTrace(row[11], row[12], row[13], row[14], row[15], row[16]))
    return trace


def _truncated(trace: EventTrace) -> EventTrace:
    return EventTrace(
        trace.event_id,
        trace.notification_key,
        trace.correlation_id,
        trace.inserted_at,
        trace.notifications,
        truncated=True,
    )
