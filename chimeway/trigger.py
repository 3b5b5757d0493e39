"""``trigger``: record an event, one notification per recipient, one delivery per channel, and
enqueue a dispatch job per ready delivery — all in the caller's transaction.

A repeated idempotency key returns the existing event and creates nothing (``duplicate=True``),
also when the two triggers race: the unique index on the key decides.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

import pgqueue

from . import deliveries, preferences, telemetry
from .dispatch import dispatch_job
from .errors import ChimewayError
from .models import Delivery, Event, Notification
from .notifier import Notifier, Recipient
from .redaction import redact
from .states import Reason

__all__ = ["PlanningFailed", "TriggerError", "TriggerResult", "trigger"]


class TriggerError(ChimewayError, ValueError):
    """The trigger call itself is invalid (idempotency key, params, notifier)."""


class PlanningFailed(ChimewayError):
    """The notifier failed while planning (its recipients, channels or build raised)."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error
        super().__init__(f"planning failed: {step}: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class TriggerResult:
    """What a trigger created (or, for a duplicate key, the event that already existed)."""

    event: Event
    duplicate: bool
    notifications: list[Notification] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    jobs: list[pgqueue.Job] = field(default_factory=list)

    @property
    def delivery_ids(self) -> list[uuid.UUID]:
        return [d.id for d in self.deliveries]


def _normalize_recipients(raw: Sequence[Recipient | str]) -> list[Recipient]:
    by_identity: dict[str, Recipient] = {}
    for item in raw:
        recipient = Recipient(item) if isinstance(item, str) else item
        if not isinstance(recipient, Recipient):
            raise TriggerError(f"recipients must be Recipient objects or identity strings, got {item!r}")
        identity = recipient.identity.strip() if isinstance(recipient.identity, str) else ""
        if identity:
            by_identity.setdefault(identity, Recipient(identity, recipient.type))
    return [by_identity[key] for key in sorted(by_identity)]


def _normalize_channels(raw: Sequence[str]) -> list[str]:
    if isinstance(raw, str) or not all(isinstance(c, str) for c in raw):
        raise TriggerError(f"channels must be a list of strings, got {raw!r}")
    return sorted({c.strip() for c in raw if c.strip()})


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TriggerError(f"{what} must be a mapping, got {type(value).__name__}")
    try:
        return dict(json.loads(json.dumps(redact(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise TriggerError(f"{what} must contain only JSON values: {exc}") from None


def _call(step: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise PlanningFailed(step, exc) from exc


def trigger(
    session: Session,
    notifier: Notifier,
    params: Mapping[str, Any],
    *,
    idempotency_key: str,
    correlation_id: str | None = None,
    queue_schema: str = "public",
) -> TriggerResult:
    """Fan ``params`` out through ``notifier`` in ``session``'s transaction; see the module doc.

    The caller commits. ``queue_schema`` is where pgqueue's ``jobs`` table lives.
    """
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise TriggerError(f"idempotency_key must be a non-blank string, got {idempotency_key!r}")
    if not isinstance(notifier, Notifier) or not notifier.notification_key:
        raise TriggerError(f"notifier must be a chimeway.Notifier with a notification_key, got {notifier!r}")
    payload = _json_object(params, "params")
    key = notifier.notification_key

    with telemetry.span(("chimeway", "events", "create"), {"notification_key": key}):
        event = session.scalars(
            pg_insert(Event)
            .values(
                notification_key=key,
                notification_version=notifier.version,
                idempotency_key=idempotency_key,
                payload=payload,
                correlation_id=correlation_id,
            )
            .on_conflict_do_nothing(index_elements=[Event.idempotency_key])
            .returning(Event)
        ).one_or_none()
    if event is None:
        existing = session.scalars(select(Event).where(Event.idempotency_key == idempotency_key)).one()
        return TriggerResult(existing, duplicate=True)

    recipients = _normalize_recipients(_call("recipients", notifier.recipients, params))
    category = notifier.category or (
        payload.get("category") if isinstance(payload.get("category"), str) else None
    )
    notifications: list[Notification] = []
    planned: list[Delivery] = []
    with telemetry.span(("chimeway", "deliveries", "plan"), {"notification_key": key, "event_id": event.id}):
        for recipient in recipients:
            content = _json_object(_call("build", notifier.build, params, recipient), "build()")
            channels = _normalize_channels(_call("channels", notifier.channels, params, recipient))
            notification = session.scalars(
                pg_insert(Notification)
                .values(
                    event_id=event.id,
                    recipient_identity=recipient.identity,
                    recipient_type=recipient.type,
                    metadata_=content,
                )
                .returning(Notification)
            ).one()
            notifications.append(notification)
            for channel in channels:
                delivery = deliveries.plan_delivery(
                    session,
                    notification.id,
                    channel,
                    actor_id=recipient.identity,
                    notification_key=key,
                    event_id=event.id,
                    correlation_id=correlation_id,
                )
                reason = _suppression(session, recipient.identity, key, channel, category)
                if reason is not None:
                    deliveries.suppress_delivery(session, delivery, reason, checkpoint="planning")
                planned.append(delivery)

    ready = [d for d in planned if d.status == "pending" and d.orchestration_state == "ready"]
    jobs = (
        pgqueue.insert_all(session, [dispatch_job(d.id) for d in ready], schema=queue_schema) if ready else []
    )
    return TriggerResult(event, False, notifications, planned, jobs)


def _suppression(
    session: Session, recipient: str, key: str, channel: str, category: str | None
) -> str | None:
    if not preferences.channel_enabled(session, recipient, key, channel):
        return Reason.CHANNEL_DISABLED
    if category is not None and not preferences.category_enabled(session, recipient, category):
        return Reason.CATEGORY_DISABLED
    return None
