"""The delivery state machine: every change of a delivery's status goes through this module.

Each change is a compare-and-set, ``UPDATE … WHERE id = :id AND status = :expected``, where the
expected status is the one the caller's ``delivery`` object shows. A change that would break the
rules raises (:class:`~chimeway.errors.InvalidTransition`,
:class:`~chimeway.errors.InvalidExhaust`); one that is legal returns whether it wrote the row, and
leaves ``delivery`` showing the row as it is now — changed by this call, already in the asked-for
status, or changed first by another transaction.

Transactions: every function takes a sync SQLAlchemy :class:`~sqlalchemy.orm.Session`. Inside a
transaction the caller has open, a function's writes form a savepoint and the caller commits;
with none open, the function runs in a transaction of its own and commits it. Note that any
query opens a transaction (SQLAlchemy's autobegin): commit before calling an adapter, which must
never run inside one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from psycopg import errors as pg_errors
from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import telemetry
from ._session import atomic
from .adapters.base import DeliveryContext
from .errors import DeliveryNotFound, InvalidExhaust, InvalidTransition, InvalidValue, NotificationNotFound
from .explain import Explanation, explain_delivery
from .models import Delivery, DeliveryAttempt, Event, Notification
from .redaction import redact
from .states import (
    CHECKPOINTS,
    ERROR_CLASSES,
    OUTCOMES,
    STATUSES,
    TERMINAL_STATES,
    TRANSITIONS,
    Checkpoint,
    DeliveryStatus,
    ErrorClass,
    Outcome,
    Reason,
)

__all__ = [
    "AttemptOutcome",
    "Explanation",
    "RecordedAttempt",
    "delivery_context",
    "error_classes",
    "exhaust_delivery",
    "explain_delivery",
    "fetch_delivery",
    "get_delivery",
    "plan_delivery",
    "record_attempt",
    "suppress_delivery",
    "terminal_states",
    "transition_status",
]

# The error classes each attempt outcome may carry (the classifier's only pairs; the database
# checks the same).
_CLASSES_BY_OUTCOME: dict[str, tuple[ErrorClass | None, ...]] = {
    "succeeded": (None,),
    "failed": ("temporary",),
    "rejected": ("permanent", "unknown_classification"),
    "bounced": ("bounced",),
}
# Attempt error classes that end a delivery at once, and the reason they leave on it.
_ENDING_CLASSES: dict[str, str] = {"permanent": Reason.PERMANENT_FAILURE, "bounced": Reason.BOUNCED}
# Where an ending attempt may find the locked row: sent (dispatched), or sent again after a
# failure recorded by a concurrent attempt (failed).
_CANCELLABLE_BY_ATTEMPT: tuple[DeliveryStatus, ...] = ("dispatched", "failed")
# A policy may suppress a delivery that has not ended; Elixir allows any state, we refuse to
# overwrite an ending that is already explained.
_SUPPRESSIBLE: tuple[DeliveryStatus, ...] = ("pending", "dispatched", "failed")

_ATTEMPT_RECORD = ("chimeway", "attempts", "record")


def terminal_states() -> tuple[DeliveryStatus, ...]:
    """The statuses a delivery never leaves: succeeded, suppressed, cancelled."""
    return TERMINAL_STATES


def error_classes() -> tuple[ErrorClass, ...]:
    """The error classes an attempt may record: temporary, permanent, bounced, unknown_classification."""
    return ERROR_CLASSES


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one adapter call came to, as :func:`record_attempt` stores it.

    Build it from an adapter's result with ``AttemptOutcome(*classify(result), adapter=name)``.
    """

    outcome: Outcome
    error_class: ErrorClass | None = None
    provider_response: Mapping[str, Any] | None = None
    provider_message_id: str | None = None
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise InvalidValue("outcome", self.outcome, OUTCOMES)
        if self.error_class is not None and self.error_class not in ERROR_CLASSES:
            raise InvalidValue("error_class", self.error_class, (*ERROR_CLASSES, None))
        allowed = _CLASSES_BY_OUTCOME[self.outcome]
        if self.error_class not in allowed:
            raise InvalidValue(f"error_class for outcome {self.outcome!r}", self.error_class, allowed)


@dataclass(frozen=True, slots=True)
class RecordedAttempt:
    """The attempt :func:`record_attempt` inserted and the delivery as it left it."""

    delivery: Delivery
    attempt: DeliveryAttempt


def _uuid(name: str, value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidValue(name, value, "a UUID") from None


def _text(name: str, value: object) -> str:
    text = value.value if isinstance(value, Enum) else value
    if not isinstance(text, str) or not text.strip():
        raise InvalidValue(name, value, "a non-empty string")
    return text.strip()


def _status(value: object) -> DeliveryStatus:
    for status in STATUSES:
        if value == status:
            return status
    raise InvalidValue("status", value, STATUSES)


def _require_loaded(session: Session, delivery: Delivery) -> None:
    # The compare-and-set refreshes the caller's object through the session's identity map; an
    # object from another session (or none) would silently keep showing a stale status.
    if delivery not in session:
        raise InvalidValue("delivery", delivery, "a row loaded in this session (see get_delivery)")


def _checkpoint(value: object) -> Checkpoint:
    for checkpoint in CHECKPOINTS:
        if value == checkpoint:
            return checkpoint
    raise InvalidValue("checkpoint", value, CHECKPOINTS)


# --- reading -------------------------------------------------------------------------------------


def fetch_delivery(session: Session, delivery_id: uuid.UUID | str) -> Delivery | None:
    """The delivery with ``delivery_id`` as the database has it now, or None."""
    return session.get(Delivery, _uuid("delivery_id", delivery_id), populate_existing=True)


def get_delivery(session: Session, delivery_id: uuid.UUID | str) -> Delivery:
    """The delivery with ``delivery_id`` as the database has it now; raises DeliveryNotFound."""
    delivery = fetch_delivery(session, delivery_id)
    if delivery is None:
        raise DeliveryNotFound(delivery_id)
    return delivery


def delivery_context(session: Session, delivery_id: uuid.UUID | str) -> DeliveryContext:
    """What an adapter gets for the next attempt of a delivery, numbered as it will be recorded."""
    key = _uuid("delivery_id", delivery_id)
    row = session.execute(
        select(Delivery, Notification.recipient_identity, Notification.metadata_, Event.notification_key)
        .join(Notification, Notification.id == Delivery.notification_id)
        .join(Event, Event.id == Notification.event_id)
        .where(Delivery.id == key)
    ).one_or_none()
    if row is None:
        raise DeliveryNotFound(delivery_id)
    delivery, recipient, content, notification_key = row
    return DeliveryContext(
        delivery_id=delivery.id,
        notification_id=delivery.notification_id,
        channel=delivery.channel,
        attempt_number=_count_attempts(session, key) + 1,
        notification_key=notification_key,
        recipient_identity=recipient,
        metadata=content,
    )


def _count_attempts(session: Session, delivery_id: uuid.UUID) -> int:
    count = session.scalar(
        select(func.count()).select_from(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id)
    )
    return int(count or 0)


# --- planning ------------------------------------------------------------------------------------


def plan_delivery(
    session: Session,
    notification_id: uuid.UUID | str,
    channel: str,
    *,
    tenant_id: str = "default",
    actor_id: str = "system",
    delay_fallback: bool = False,
    metadata: Mapping[str, Any] | None = None,
    notification_key: str | None = None,
    event_id: uuid.UUID | str | None = None,
    correlation_id: str | None = None,
    delayed_fallback_source: str | None = None,
) -> Delivery:
    """Make sure the notification has a delivery on ``channel``; return that row as it is now.

    Idempotent: planning the same (notification, channel) again inserts nothing and returns the
    existing row with its current status, also when two transactions plan it at once.
    ``notification_key``, ``event_id``, ``correlation_id`` and ``delayed_fallback_source`` are
    copied into the row's metadata, for tracing.
    """
    notification = _uuid("notification_id", notification_id)
    channel_name = _text("channel", channel)
    meta = dict(metadata or {})
    for key, value in (
        ("notification_key", notification_key),
        ("event_id", event_id),
        ("correlation_id", correlation_id),
        ("delayed_fallback_source", delayed_fallback_source),
    ):
        if value is not None:
            meta[key] = str(value)
    # A concurrent planner's row makes this a no-op (it waits for that transaction to end), so
    # the re-read below always finds the one row, whoever inserted it.
    statement = (
        pg_insert(Delivery)
        .values(
            notification_id=notification,
            channel=channel_name,
            tenant_id=_text("tenant_id", tenant_id),
            actor_id=_text("actor_id", actor_id),
            delay_fallback=bool(delay_fallback),
            metadata_=redact(meta),
        )
        .on_conflict_do_nothing(index_elements=[Delivery.notification_id, Delivery.channel])
    )
    try:
        with atomic(session):
            session.execute(statement)
            return session.scalars(
                select(Delivery)
                .where(Delivery.notification_id == notification, Delivery.channel == channel_name)
                .execution_options(populate_existing=True)
            ).one()
    except IntegrityError as exc:
        if isinstance(exc.orig, pg_errors.ForeignKeyViolation):
            raise NotificationNotFound(notification_id) from exc
        raise


# --- status changes ------------------------------------------------------------------------------


def _compare_and_set(
    session: Session,
    delivery: Delivery,
    expected: DeliveryStatus,
    to: DeliveryStatus,
    *,
    reason: str | None = None,
    checkpoint: Checkpoint | None = None,
) -> bool:
    """The one UPDATE behind every status change; True when it won, and ``delivery`` refreshed."""
    values: dict[Any, Any] = {Delivery.status: to, Delivery.updated_at: func.now()}
    if reason is not None:
        values[Delivery.suppression_reason] = reason
    if checkpoint is not None:
        # Merged in SQL, not from the caller's copy, so a key written meanwhile survives.
        values[Delivery.metadata_] = Delivery.metadata_.op("||")(
            literal({"policy_checkpoint": checkpoint}, JSONB)
        )
    written = session.scalars(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.status == expected)
        .values(values)
        .returning(Delivery),
        execution_options={"populate_existing": True, "synchronize_session": False},
    ).one_or_none()
    if written is None:
        session.refresh(delivery)  # lost the race: show the caller what won
        return False
    return True


def transition_status(session: Session, delivery: Delivery, to: DeliveryStatus) -> bool:
    """Move ``delivery`` to status ``to`` if the transition table allows it.

    Allowed: pending → dispatched | suppressed | cancelled; dispatched → succeeded | failed |
    suppressed; failed → dispatched. Anything else raises InvalidTransition (in particular
    failed → cancelled, which is :func:`exhaust_delivery`'s, and dispatched → cancelled, which is
    :func:`record_attempt`'s). Returns True when this call changed the row; False when it was
    already ``to`` (no write) or another transaction changed it first (``delivery`` shows how).
    """
    target = _status(to)
    _require_loaded(session, delivery)
    with atomic(session):
        current = _status(delivery.status)
        if current == target:
            return False
        allowed = TRANSITIONS[current]
        if target not in allowed:
            raise InvalidTransition(current, target, allowed)
        return _compare_and_set(session, delivery, current, target)


def suppress_delivery(
    session: Session, delivery: Delivery, reason: str, checkpoint: Checkpoint = "perform"
) -> bool:
    """End ``delivery`` as suppressed by policy (``channel_disabled``, ``already_read``, …).

    ``checkpoint`` ("planning" or "perform") is merged into its metadata as ``policy_checkpoint``.
    Allowed from any status that has not ended; an ended delivery raises InvalidTransition.
    Returns whether this call wrote the row (False when it was already suppressed).
    """
    reason_text = _text("reason", reason)
    at = _checkpoint(checkpoint)
    _require_loaded(session, delivery)
    with atomic(session):
        current = _status(delivery.status)
        if current == "suppressed":
            return False
        if current not in _SUPPRESSIBLE:
            raise InvalidTransition(current, "suppressed", TRANSITIONS[current])
        return _compare_and_set(session, delivery, current, "suppressed", reason=reason_text, checkpoint=at)


def exhaust_delivery(session: Session, delivery: Delivery) -> bool:
    """End a ``failed`` delivery whose retries are used up: cancelled, ``retries_exhausted``.

    Adds ``policy_checkpoint: "perform"`` to its metadata, keeping every other key. Any status
    but failed raises InvalidExhaust. Returns whether this call wrote the row.
    """
    _require_loaded(session, delivery)
    with atomic(session):
        current = _status(delivery.status)
        if current != "failed":
            raise InvalidExhaust(current)
        return _compare_and_set(
            session, delivery, "failed", "cancelled", reason=Reason.RETRIES_EXHAUSTED, checkpoint="perform"
        )


# --- attempts ------------------------------------------------------------------------------------


def record_attempt(
    session: Session, delivery_id: uuid.UUID | str, outcome_attrs: AttemptOutcome
) -> RecordedAttempt:
    """Append an attempt to a delivery and move the delivery to where that outcome leads.

    One transaction (a savepoint inside the caller's): lock the delivery row, number the attempt
    ``count + 1``, insert it, then change the *locked* row's status — succeeded → succeeded;
    temporary or unknown_classification → failed; permanent → cancelled (``permanent_failure``);
    bounced → cancelled (``bounced``). Concurrent calls on one delivery queue on the lock, so
    numbers are 1, 2, 3, … without gaps or repeats. If the status change is not allowed (the row
    is pending, or already ended otherwise) it raises InvalidTransition and nothing is recorded.
    Emits ``("chimeway", "attempts", "record", "stop")``.
    """
    key = _uuid("delivery_id", delivery_id)
    with telemetry.span(_ATTEMPT_RECORD, {"delivery_id": key}) as span_meta, atomic(session):
        delivery = session.scalars(
            select(Delivery)
            .where(Delivery.id == key)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if delivery is None:
            raise DeliveryNotFound(delivery_id)
        number = _count_attempts(session, key) + 1
        response = outcome_attrs.provider_response
        attempt = session.scalars(
            insert(DeliveryAttempt)
            .values(
                delivery_id=key,
                attempt_number=number,
                outcome=outcome_attrs.outcome,
                error_class=outcome_attrs.error_class,
                provider_response=None if response is None else redact(response),
                provider_message_id=outcome_attrs.provider_message_id,
                adapter=outcome_attrs.adapter,
            )
            .returning(DeliveryAttempt)
        ).one()
        _converge(session, delivery, outcome_attrs)
        span_meta.update(
            attempt_id=attempt.id,
            attempt_number=number,
            outcome=outcome_attrs.outcome,
            error_class=outcome_attrs.error_class,
            channel=delivery.channel,
            adapter_module=outcome_attrs.adapter,
            suppression_reason=delivery.suppression_reason,
        )
    return RecordedAttempt(delivery, attempt)


def _converge(session: Session, locked: Delivery, outcome: AttemptOutcome) -> None:
    """Move the locked row to where ``outcome`` leads; its lock means the compare-and-set wins."""
    current = _status(locked.status)
    ending_reason = _ENDING_CLASSES.get(outcome.error_class or "")
    if ending_reason is not None:
        if current == "cancelled":
            return
        if current not in _CANCELLABLE_BY_ATTEMPT:
            hint = "an attempt can only end a delivery that is dispatched (or failed by a concurrent attempt)"
            raise InvalidTransition(current, "cancelled", hint=hint)
        _compare_and_set(session, locked, current, "cancelled", reason=ending_reason, checkpoint="perform")
        return
    target: DeliveryStatus = "succeeded" if outcome.outcome == "succeeded" else "failed"
    if current == target:
        return
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target, TRANSITIONS[current])
    _compare_and_set(session, locked, current, target)
