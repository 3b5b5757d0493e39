"""Tell the story of one delivery from its durable rows: ``explain_delivery(session, delivery_id)``.

Everything comes from the event, notification, delivery and attempt rows; nothing depends on
logs or telemetry having been kept.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .digests.trace import DigestEmission, DigestMembership, digest_facts
from .errors import DeliveryNotFound, InvalidValue
from .models import Delivery, DeliveryAttempt, Event, JourneyRun, JourneyTransition, Notification
from .states import Reason

__all__ = ["AttemptSummary", "Explanation", "JourneyTrace", "TimelineEntry", "explain_delivery"]


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """One recorded adapter call."""

    number: int
    outcome: str
    error_class: str | None
    adapter: str | None
    provider_message_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One dated fact in a delivery's life: ``event`` names it, ``detail`` gives its particulars."""

    at: datetime
    event: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class JourneyTrace:
    """The journey run that emitted a delivery: where it stands and every move it made."""

    run_id: uuid.UUID
    step: int | None
    state: str
    current_step: int
    outcomes: Mapping[str, Any]
    terminal_reason: str | None
    #: (at, step, from_state, to_state, reason, context), oldest first
    transitions: tuple[tuple[datetime, int | None, str | None, str, str, Mapping[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Who a delivery was for, where it stands, every attempt, its timeline, and why it ended there."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    notification_id: uuid.UUID
    correlation_id: str | None
    notification_key: str
    recipient: str
    channel: str
    status: str
    suppression_reason: str | None
    policy_checkpoint: str | None
    attempts: tuple[AttemptSummary, ...]
    timeline: tuple[TimelineEntry, ...]
    #: one sentence, e.g. "cancelled after 5 temporary failures: retries exhausted"
    why: str
    #: 'ready', or 'deferred' (quiet hours) until ``next_eligible_at``
    orchestration_state: str = "ready"
    next_eligible_at: datetime | None = None
    #: why it was deferred ("quiet_hours") and the facts it was decided on (zone, minutes)
    planning_reason: str | None = None
    planning_context: Mapping[str, Any] | None = None
    #: when the recovery plugin re-drove it, and why (``recovered_at``, ``recovery_reason``, …)
    recovery: Mapping[str, Any] | None = None
    #: the template it is rendered with (chimeway.rendering), fixed when it was planned
    render_key: str | None = None
    render_version: int | None = None
    #: the journey run that emitted it, with its transition log (chimeway.journeys)
    journey: JourneyTrace | None = None
    #: the digest bucket it was held in and the digest delivery that carried it (a member)
    digest_membership: DigestMembership | None = None
    #: the bucket it was emitted for and the deliveries it carries (a digest delivery)
    digest: DigestEmission | None = None

    @property
    def last_attempt(self) -> AttemptSummary | None:
        return self.attempts[-1] if self.attempts else None


def explain_delivery(session: Session, delivery_id: uuid.UUID | str) -> Explanation:
    """The full story of a delivery; raises DeliveryNotFound when there is no such delivery."""
    try:
        key = delivery_id if isinstance(delivery_id, uuid.UUID) else uuid.UUID(str(delivery_id))
    except ValueError:
        raise InvalidValue("delivery_id", delivery_id, "a UUID") from None
    row = session.execute(
        select(Delivery, Notification, Event)
        .join(Notification, Notification.id == Delivery.notification_id)
        .join(Event, Event.id == Notification.event_id)
        .where(Delivery.id == key)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise DeliveryNotFound(delivery_id)
    delivery, notification, event = row
    attempts = tuple(
        AttemptSummary(
            a.attempt_number, a.outcome, a.error_class, a.adapter, a.provider_message_id, a.inserted_at
        )
        for a in session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == key)
            .order_by(DeliveryAttempt.attempt_number)
        )
    )
    checkpoint = delivery.metadata_.get("policy_checkpoint")
    journey = _journey(session, delivery)
    membership, emission = digest_facts(session, key)
    timeline = (
        _timeline(event, notification, delivery, attempts)
        + _digest_entries(membership, emission)
        + _journey_entries(journey)
    )
    return Explanation(
        delivery_id=delivery.id,
        event_id=event.id,
        notification_id=notification.id,
        correlation_id=event.correlation_id,
        notification_key=event.notification_key,
        recipient=notification.recipient_identity,
        channel=delivery.channel,
        status=delivery.status,
        suppression_reason=delivery.suppression_reason,
        policy_checkpoint=checkpoint if isinstance(checkpoint, str) else None,
        attempts=attempts,
        timeline=tuple(sorted(timeline, key=lambda entry: entry.at)),
        why=_digest_why(delivery, membership) or _why(delivery, checkpoint, attempts),
        orchestration_state=delivery.orchestration_state,
        next_eligible_at=delivery.next_eligible_at,
        planning_reason=delivery.planning_reason,
        planning_context=delivery.planning_context,
        recovery={k: v for k, v in delivery.metadata_.items() if k in _RECOVERY_KEYS} or None,
        render_key=delivery.render_key,
        render_version=delivery.render_version,
        journey=journey,
        digest_membership=membership,
        digest=emission,
    )


def _journey_entries(journey: JourneyTrace | None) -> tuple[TimelineEntry, ...]:
    if journey is None:
        return ()
    return tuple(
        TimelineEntry(at, f"journey_{reason}", {"step": step, "to_state": to, **context})
        for at, step, _from, to, reason, context in journey.transitions
    )


def _journey(session: Session, delivery: Delivery) -> JourneyTrace | None:
    if delivery.journey_run_id is None:
        return None
    run = session.get(JourneyRun, delivery.journey_run_id, populate_existing=True)
    if run is None:
        return None
    moves = session.scalars(
        select(JourneyTransition).where(JourneyTransition.run_id == run.id).order_by(JourneyTransition.id)
    )
    return JourneyTrace(
        run.id,
        delivery.journey_step,
        run.state,
        run.current_step,
        dict(run.outcomes),
        run.terminal_reason,
        tuple((m.inserted_at, m.step, m.from_state, m.to_state, m.reason, dict(m.context)) for m in moves),
    )


def _digest_entries(
    membership: DigestMembership | None, emission: DigestEmission | None
) -> tuple[TimelineEntry, ...]:
    """A member's hold (its status entry tells the digesting), a digest's emission."""
    entries = []
    if membership is not None:
        detail = {
            "rule": membership.rule_key,
            "bucket_id": membership.bucket_id,
            "window_ends_at": membership.window_ends_at,
        }
        entries.append(TimelineEntry(membership.held_at, "digest_held", detail))
    if emission is not None:
        detail = {
            "rule": emission.rule_key,
            "bucket_id": emission.bucket_id,
            "members": len(emission.member_ids),
        }
        entries.append(TimelineEntry(emission.emitted_at, "digest_emitted", detail))
    return tuple(entries)


def _digest_why(delivery: Delivery, membership: DigestMembership | None) -> str | None:
    if membership is None:
        return None
    if delivery.status == "digested":
        digest, rule = membership.digest_delivery_id, membership.rule_key
        return f"digested: carried by digest delivery {digest} (rule {rule!r})"
    if delivery.status == "pending" and delivery.orchestration_state == "digest_held":
        until = membership.window_ends_at.isoformat()
        return f"held for digest rule {membership.rule_key!r} until its window ends at {until}"
    return None


def _timeline(
    event: Event, notification: Notification, delivery: Delivery, attempts: Sequence[AttemptSummary]
) -> tuple[TimelineEntry, ...]:
    entries = [
        TimelineEntry(
            event.inserted_at,
            "event_created",
            {"notification_key": event.notification_key, "correlation_id": event.correlation_id},
        ),
        TimelineEntry(
            delivery.inserted_at,
            "delivery_planned",
            {"channel": delivery.channel, "recipient": notification.recipient_identity},
        ),
    ]
    if notification.read_at is not None:
        entries.append(TimelineEntry(notification.read_at, "notification_read", {}))
    meta = delivery.metadata_
    deferred_at = _instant(meta.get("deferred_at"))
    if deferred_at is not None:
        entries.append(
            TimelineEntry(
                deferred_at,
                "deferred",
                {
                    "planning_reason": delivery.planning_reason,
                    "next_eligible_at": delivery.next_eligible_at,
                    **(delivery.planning_context or {}),
                },
            )
        )
    resumed_at = _instant(meta.get("resumed_at"))
    if resumed_at is not None:
        entries.append(TimelineEntry(resumed_at, "released", {"resume_source": meta.get("resume_source")}))
    recovered_at = _instant(meta.get("recovered_at"))
    if recovered_at is not None:
        entries.append(
            TimelineEntry(
                recovered_at,
                "recovered",
                {
                    "recovery_reason": meta.get("recovery_reason"),
                    "recovery_source": meta.get("recovery_source"),
                },
            )
        )
    entries += [
        TimelineEntry(
            a.at,
            f"attempt_{a.outcome}",
            {
                "attempt_number": a.number,
                "error_class": a.error_class,
                "adapter": a.adapter,
                "provider_message_id": a.provider_message_id,
            },
        )
        for a in attempts
    ]
    entries += _provider_feedback(delivery.metadata_.get("provider_feedback"))
    if delivery.orchestration_state == "deferred" and deferred_at is not None:
        pass  # the deferral above is its latest change
    elif delivery.status != "pending" and delivery.status != "failed":
        # The last status change is dated by updated_at; earlier ones are told by the attempts.
        entries.append(
            TimelineEntry(
                delivery.updated_at,
                delivery.status,
                {
                    "suppression_reason": delivery.suppression_reason,
                    "policy_checkpoint": delivery.metadata_.get("policy_checkpoint"),
                    **({"delivery_cap": meta["delivery_cap"]} if "delivery_cap" in meta else {}),
                    **(
                        {"digest_delivery_id": delivery.digest_delivery_id}
                        if delivery.digest_delivery_id
                        else {}
                    ),
                },
            )
        )
    # Stable: facts written in one transaction share a timestamp and keep their logical order.
    return tuple(sorted(entries, key=lambda entry: entry.at))


_RECOVERY_KEYS = ("recovered_at", "recovery_reason", "recovery_source")


def _instant(value: object) -> datetime | None:
    """An ISO-8601 instant written into a delivery's metadata, or None (absent or unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _provider_feedback(recorded: object) -> list[TimelineEntry]:
    """The provider events :mod:`chimeway.feedback` recorded on the delivery, as timeline entries."""
    if not isinstance(recorded, list):
        return []
    entries = []
    for item in recorded:
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            continue
        try:
            at = datetime.fromisoformat(str(item.get("at")))
        except ValueError:
            continue
        detail = {"adapter": item.get("adapter"), "provider_event_id": item.get("provider_event_id")}
        entries.append(TimelineEntry(at, f"provider_{item['type']}", detail))
    return entries


_CLASS_WORDS = {
    "temporary": "temporary",
    "permanent": "permanent",
    "bounced": "bounced",
    "unknown_classification": "unclassified",
}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _failures(attempts: Sequence[AttemptSummary]) -> str:
    """'5 temporary failures', or '3 failed attempts (2 temporary, 1 unclassified)' when mixed."""
    classes = Counter(a.error_class or "unknown_classification" for a in attempts if a.outcome != "succeeded")
    total = sum(classes.values())
    if total == 0:
        return "no failed attempt"
    if len(classes) == 1:
        (only,) = classes
        return _plural(total, f"{_CLASS_WORDS.get(only, only)} failure")
    parts = ", ".join(f"{n} {_CLASS_WORDS.get(c, c)}" for c, n in classes.most_common())
    return f"{_plural(total, 'failed attempt')} ({parts})"


def _why(delivery: Delivery, checkpoint: object, attempts: Sequence[AttemptSummary]) -> str:
    status, reason = delivery.status, delivery.suppression_reason
    last = attempts[-1] if attempts else None
    if delivery.orchestration_state == "deferred" and status in ("pending", "failed"):
        cause = (delivery.planning_reason or "policy").replace("_", " ")
        until = delivery.next_eligible_at
        return f"deferred by {cause} until {until.isoformat() if until else 'it is released'}"
    if status == "succeeded":
        if last is None:
            return "succeeded"
        earlier = attempts[:-1]
        return f"succeeded on attempt {last.number}" + (f" after {_failures(earlier)}" if earlier else "")
    if status == "cancelled":
        if reason == Reason.RETRIES_EXHAUSTED:
            return f"cancelled after {_failures(attempts)}: retries exhausted"
        if reason == Reason.PERMANENT_FAILURE and last is not None:
            return f"cancelled on attempt {last.number}: the provider refused it for good (permanent failure)"
        if reason == Reason.BOUNCED and last is not None and last.outcome == "succeeded":
            return f"cancelled after attempt {last.number} was accepted: the provider reported a bounce"
        if reason == Reason.BOUNCED and last is not None:
            return f"cancelled on attempt {last.number}: the address bounced"
        if reason is None:
            sent = f"after {_plural(len(attempts), 'attempt')}" if attempts else "before it was sent"
            return f"cancelled by hand {sent}, with no reason recorded"
        return f"cancelled: {reason}"
    if status == "suppressed":
        if reason is None:
            return "suppressed by hand, with no reason recorded"
        where = f" at the {checkpoint} checkpoint" if isinstance(checkpoint, str) else ""
        cap = delivery.metadata_.get("delivery_cap")
        if reason == Reason.DELIVERY_CAP_REACHED and isinstance(cap, dict):
            limit = f" ({cap.get('count')} per {cap.get('window_minutes')} minutes)"
        else:
            limit = ""
        return f"suppressed by policy{where}: {reason}{limit}"
    if status == "failed" and last is not None:
        return f"failed on attempt {last.number} ({last.error_class}); a retry is expected"
    if status == "dispatched":
        return f"dispatched for attempt {len(attempts) + 1}; its outcome is not recorded yet"
    return "pending: planned, not dispatched yet"
