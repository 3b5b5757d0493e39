"""Traces: what one trigger call became, read back from the durable rows, sync and async.

::

    from chimeway import traces

    trace = traces.get_trace(session, event_id)           # the event, its notifications, their
    for notification in trace.notifications:              # deliveries and every attempt
        for delivery in notification.deliveries:
            print(notification.recipient, delivery.channel, delivery.status)

    traces.find_traces_for_recipient(session, "user:42", notification_key="order_shipped", limit=20)
    traces.find_traces_by_correlation_id(session, "req-7f3a")
    traces.aggregate_outcomes(session, {"notification_key": "order_shipped", "since": yesterday})

Every function has an async twin (``a`` prefix) taking an ``AsyncSession``; both run one
implementation. One delivery's whole story, dated, is :func:`explain_delivery`.

A trace holds at most ``notifications_limit`` notifications of its event (in recipient order;
``truncated`` says when there were more), so tracing an event sent to a million recipients
stays cheap. A recipient's traces hold only that recipient's notification.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .errors import InvalidValue
from .explain import AttemptSummary, Explanation, explain_delivery
from .models import Delivery, DeliveryAttempt, Event, Notification

__all__ = [
    "DEFAULT_LIMIT",
    "FILTERS",
    "MAX_LIMIT",
    "OUTCOMES",
    "DeliveryTrace",
    "NotificationTrace",
    "OutcomeCount",
    "Trace",
    "aaggregate_outcomes",
    "aexplain_delivery",
    "afind_traces_by_correlation_id",
    "afind_traces_for_recipient",
    "aget_trace",
    "aggregate_outcomes",
    "explain_delivery",
    "find_traces_by_correlation_id",
    "find_traces_for_recipient",
    "get_trace",
]

#: How many traces (or notifications per trace) a call returns unless told otherwise.
DEFAULT_LIMIT: Final = 50
#: The most a call returns; a larger limit is clamped to it.
MAX_LIMIT: Final = 1000
#: The filters :func:`aggregate_outcomes` takes.
FILTERS: Final = ("notification_key", "channel", "recipient", "correlation_id", "since", "until")
#: The outcome buckets :func:`aggregate_outcomes` counts deliveries in.
OUTCOMES: Final = ("delivered", "suppressed", "failed", "deferred", "in_flight")


@dataclass(frozen=True, slots=True)
class DeliveryTrace:
    """One delivery of a traced notification, with its attempts in order."""

    id: uuid.UUID
    channel: str
    status: str
    suppression_reason: str | None
    orchestration_state: str
    next_eligible_at: datetime | None
    delay_fallback: bool
    inserted_at: datetime
    updated_at: datetime
    attempts: tuple[AttemptSummary, ...]


@dataclass(frozen=True, slots=True)
class NotificationTrace:
    """One recipient's notification of a traced event, with its deliveries by channel."""

    id: uuid.UUID
    recipient: str
    category: str | None
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None
    inserted_at: datetime
    deliveries: tuple[DeliveryTrace, ...]


@dataclass(frozen=True, slots=True)
class Trace:
    """One trigger call: the event and what it fanned out to."""

    event_id: uuid.UUID
    notification_key: str
    notification_version: int
    idempotency_key: str
    correlation_id: str | None
    inserted_at: datetime
    notifications: tuple[NotificationTrace, ...]
    #: the event has more notifications than the trace holds
    truncated: bool = False

    @property
    def delivery_ids(self) -> tuple[uuid.UUID, ...]:
        return tuple(d.id for n in self.notifications for d in n.deliveries)


@dataclass(frozen=True, slots=True, order=True)
class OutcomeCount:
    """How many deliveries of one notification key on one channel ended in one bucket."""

    notification_key: str
    channel: str
    outcome: str
    count: int


def _limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(name, value, f"a positive integer (at most {MAX_LIMIT} is used)")
    return min(value, MAX_LIMIT)


def _uuid(name: str, value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidValue(name, value, "a UUID") from None


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(name, value, "a non-empty string")
    return value


def _build(
    session: Session, events: Sequence[Event], recipient: str | None, notifications_limit: int
) -> list[Trace]:
    """The traces of ``events`` (kept in their order): four statements whatever their number."""
    if not events:
        return []
    event_ids = [event.id for event in events]
    query = select(Notification).where(Notification.event_id.in_(event_ids))
    if recipient is not None:
        query = query.where(Notification.recipient_identity == recipient)
    else:
        # per event, the first notifications_limit + 1 recipients: one more tells it was truncated
        ranked = query.add_columns(
            func.row_number()
            .over(partition_by=Notification.event_id, order_by=Notification.recipient_identity)
            .label("position")
        ).subquery()
        query = (
            select(Notification)
            .join(ranked, ranked.c.id == Notification.id)
            .where(ranked.c.position <= notifications_limit + 1)
        )
    notifications = session.scalars(query.order_by(Notification.recipient_identity)).all()
    by_event: dict[uuid.UUID, list[Notification]] = defaultdict(list)
    for notification in notifications:
        by_event[notification.event_id].append(notification)
    notification_ids = [n.id for n in notifications]
    rows = session.scalars(
        select(Delivery).where(Delivery.notification_id.in_(notification_ids)).order_by(Delivery.channel)
    ).all()
    by_notification: dict[uuid.UUID, list[Delivery]] = defaultdict(list)
    for delivery in rows:
        by_notification[delivery.notification_id].append(delivery)
    attempts: dict[uuid.UUID, list[AttemptSummary]] = defaultdict(list)
    for a in session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_([d.id for d in rows]))
        .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt_number)
    ):
        attempts[a.delivery_id].append(
            AttemptSummary(
                a.attempt_number, a.outcome, a.error_class, a.adapter, a.provider_message_id, a.inserted_at
            )
        )

    def delivery_trace(d: Delivery) -> DeliveryTrace:
        return DeliveryTrace(
            d.id,
            d.channel,
            d.status,
            d.suppression_reason,
            d.orchestration_state,
            d.next_eligible_at,
            d.delay_fallback,
            d.inserted_at,
            d.updated_at,
            tuple(attempts[d.id]),
        )

    traces = []
    for event in events:
        found = by_event[event.id]
        kept = found[:notifications_limit]
        traces.append(
            Trace(
                event.id,
                event.notification_key,
                event.notification_version,
                event.idempotency_key,
                event.correlation_id,
                event.inserted_at,
                tuple(
                    NotificationTrace(
                        n.id,
                        n.recipient_identity,
                        n.category,
                        n.seen_at,
                        n.read_at,
                        n.archived_at,
                        n.inserted_at,
                        tuple(delivery_trace(d) for d in by_notification[n.id]),
                    )
                    for n in kept
                ),
                truncated=len(found) > len(kept),
            )
        )
    return traces


def get_trace(
    session: Session, event_id: uuid.UUID | str, *, notifications_limit: int = MAX_LIMIT
) -> Trace | None:
    """The trace of one event, or None when there is no such event."""
    key = _uuid("event_id", event_id)
    limit = _limit("notifications_limit", notifications_limit)
    event = session.get(Event, key, populate_existing=True)
    if event is None:
        return None
    return _build(session, [event], None, limit)[0]


def find_traces_for_recipient(
    session: Session, identity: str, *, notification_key: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Trace]:
    """The newest ``limit`` events that notified ``identity`` (of ``notification_key`` if given),
    newest first, each holding only that recipient's notification."""
    recipient = _text("identity", identity)
    count = _limit("limit", limit)
    query = (
        select(Event)
        .join(Notification, Notification.event_id == Event.id)
        .where(Notification.recipient_identity == recipient)
    )
    if notification_key is not None:
        query = query.where(Event.notification_key == _text("notification_key", notification_key))
    events = session.scalars(query.order_by(Event.inserted_at.desc(), Event.id.desc()).limit(count)).all()
    return _build(session, events, recipient, 1)


def find_traces_by_correlation_id(
    session: Session,
    correlation_id: str,
    *,
    limit: int = DEFAULT_LIMIT,
    notifications_limit: int = MAX_LIMIT,
) -> list[Trace]:
    """The events triggered with ``correlation_id`` (at most ``limit``), oldest first."""
    cid = _text("correlation_id", correlation_id)
    events = session.scalars(
        select(Event)
        .where(Event.correlation_id == cid)
        .order_by(Event.inserted_at, Event.id)
        .limit(_limit("limit", limit))
    ).all()
    return _build(session, events, None, _limit("notifications_limit", notifications_limit))


_BUCKET = case(
    (Delivery.status == "succeeded", "delivered"),
    (Delivery.status == "suppressed", "suppressed"),
    (Delivery.status == "cancelled", "failed"),
    (Delivery.orchestration_state == "deferred", "deferred"),
    else_="in_flight",
)


def aggregate_outcomes(session: Session, filters: Mapping[str, Any] | None = None) -> list[OutcomeCount]:
    """Deliveries counted by notification key, channel and outcome, sorted by those three.

    Outcomes: ``delivered`` (succeeded), ``suppressed`` (by a policy), ``failed`` (cancelled:
    permanent failure, bounce, retries exhausted), ``deferred`` (waiting out quiet hours) and
    ``in_flight`` (pending, dispatched, or failed with a retry to come). ``filters`` narrows the
    deliveries: ``notification_key``, ``channel``, ``recipient``, ``correlation_id`` (strings),
    ``since`` and ``until`` (aware datetimes, on when the delivery was planned: since ≤ t < until).
    """
    given = dict(filters or {})
    unknown = sorted(set(given) - set(FILTERS))
    if unknown:
        raise InvalidValue(f"filter {unknown[0]!r}", given[unknown[0]], f"one of {', '.join(FILTERS)}")
    query = (
        select(Event.notification_key, Delivery.channel, _BUCKET.label("outcome"), func.count())
        .select_from(Delivery)
        .join(Notification, Notification.id == Delivery.notification_id)
        .join(Event, Event.id == Notification.event_id)
    )
    for name, column in (
        ("notification_key", Event.notification_key),
        ("channel", Delivery.channel),
        ("recipient", Notification.recipient_identity),
        ("correlation_id", Event.correlation_id),
    ):
        if given.get(name) is not None:
            query = query.where(column == _text(name, given[name]))
    for name in ("since", "until"):
        value = given.get(name)
        if value is None:
            continue
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidValue(name, value, "a timezone-aware datetime")
        query = query.where(
            Delivery.inserted_at >= value if name == "since" else Delivery.inserted_at < value
        )
    rows = session.execute(query.group_by(Event.notification_key, Delivery.channel, _BUCKET))
    return sorted(OutcomeCount(key, channel, outcome, int(count)) for key, channel, outcome, count in rows)


# -- async twins ------------------------------------------------------------------------------------


async def aget_trace(
    session: AsyncSession, event_id: uuid.UUID | str, *, notifications_limit: int = MAX_LIMIT
) -> Trace | None:
    """The async twin of :func:`get_trace`."""
    return await session.run_sync(
        lambda sync: get_trace(sync, event_id, notifications_limit=notifications_limit)
    )


async def afind_traces_for_recipient(
    session: AsyncSession, identity: str, *, notification_key: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Trace]:
    """The async twin of :func:`find_traces_for_recipient`."""
    return await session.run_sync(
        lambda sync: find_traces_for_recipient(sync, identity, notification_key=notification_key, limit=limit)
    )


async def afind_traces_by_correlation_id(
    session: AsyncSession,
    correlation_id: str,
    *,
    limit: int = DEFAULT_LIMIT,
    notifications_limit: int = MAX_LIMIT,
) -> list[Trace]:
    """The async twin of :func:`find_traces_by_correlation_id`."""
    return await session.run_sync(
        lambda sync: find_traces_by_correlation_id(
            sync, correlation_id, limit=limit, notifications_limit=notifications_limit
        )
    )


async def aaggregate_outcomes(
    session: AsyncSession, filters: Mapping[str, Any] | None = None
) -> list[OutcomeCount]:
    """The async twin of :func:`aggregate_outcomes`."""
    return await session.run_sync(aggregate_outcomes, filters)


async def aexplain_delivery(session: AsyncSession, delivery_id: uuid.UUID | str) -> Explanation:
    """The async twin of :func:`~chimeway.explain.explain_delivery`."""
    return await session.run_sync(explain_delivery, delivery_id)
