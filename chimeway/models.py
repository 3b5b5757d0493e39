"""Typed SQLAlchemy models of Chimeway's tables (``sql/chimeway/``, the source of truth).

The tables carry no schema: map them to yours per engine or connection with
``execution_options(schema_translate_map={None: "my_schema"})``. Change rows' status only through
:mod:`chimeway.deliveries`; attempts are append-only (the database refuses an UPDATE).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, MetaData, Text, Uuid, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "CategoryPreference",
    "Delivery",
    "DeliveryAttempt",
    "DigestBucket",
    "DigestMembership",
    "DigestRule",
    "Event",
    "Notification",
    "NotificationPreference",
    "PolicySettings",
]


class Base(DeclarativeBase):
    """The declarative base of Chimeway's models; its ``metadata`` holds only Chimeway's tables."""

    metadata = MetaData()
    type_annotation_map = {
        uuid.UUID: Uuid(as_uuid=True),
        datetime: DateTime(timezone=True),
        str: Text(),
        dict[str, Any]: JSONB(),
    }


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, server_default=func.gen_random_uuid())


def _created() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(server_default=func.now(), onupdate=func.now())


class Event(Base):
    """One trigger call: which notification, with what payload, under which idempotency key."""

    __tablename__ = "chimeway_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    notification_key: Mapped[str]
    notification_version: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str]
    payload: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    correlation_id: Mapped[str | None]
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Notification(Base):
    """One recipient of an event; its seen/read/archived timestamps make it an inbox entry."""

    __tablename__ = "chimeway_notifications"

    id: Mapped[uuid.UUID] = _uuid_pk()
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Event.id, ondelete="CASCADE"))
    recipient_identity: Mapped[str]
    recipient_type: Mapped[str]
    seen_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
    # ``metadata`` is reserved on declarative classes; the column keeps its name.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    #: the notifier's category (or the payload's ``"category"``); None when it has none
    category: Mapped[str | None]
    #: the transaction that last changed what the inbox shows of this row: the change feed's
    #: order (see :mod:`chimeway.inbox`). Set by the database, on insert and by a trigger.
    changed_xid: Mapped[int] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text::bigint)")
    )

    event: Mapped[Event] = relationship(viewonly=True)


class Delivery(Base):
    """One notification on one channel: the row whose ``status`` is the delivery state machine."""

    __tablename__ = "chimeway_deliveries"

    id: Mapped[uuid.UUID] = _uuid_pk()
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Notification.id, ondelete="CASCADE"))
    channel: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="pending")
    suppression_reason: Mapped[str | None]
    delay_fallback: Mapped[bool] = mapped_column(Boolean, server_default="false")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    orchestration_state: Mapped[str] = mapped_column(server_default="ready")
    #: a deferred delivery's release time (quiet hours): its dispatch job runs again then
    next_eligible_at: Mapped[datetime | None]
    #: why it was deferred ("quiet_hours") and the facts that decided it
    planning_reason: Mapped[str | None]
    planning_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    #: a ``digested`` delivery's digest: the delivery that carried it (chimeway.digests)
    digest_delivery_id: Mapped[uuid.UUID | None]
    tenant_id: Mapped[str] = mapped_column(server_default="default")
    actor_id: Mapped[str] = mapped_column(server_default="system")
    #: the template it is rendered with (key, version) and the data it is rendered from
    render_key: Mapped[str | None]
    render_version: Mapped[int | None] = mapped_column(Integer)
    render_data: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    #: the journey run and step that emitted it (chimeway.journeys)
    journey_run_id: Mapped[uuid.UUID | None]
    journey_step: Mapped[int | None] = mapped_column(Integer)
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    notification: Mapped[Notification] = relationship(viewonly=True)
    attempts: Mapped[list[DeliveryAttempt]] = relationship(
        viewonly=True, order_by="DeliveryAttempt.attempt_number"
    )


class DeliveryAttempt(Base):
    """One adapter call for a delivery and what came of it. Rows are only ever inserted."""

    __tablename__ = "chimeway_delivery_attempts"

    id: Mapped[uuid.UUID] = _uuid_pk()
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Delivery.id, ondelete="CASCADE"))
    attempt_number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str]
    error_class: Mapped[str | None]
    # none_as_null: Python None is SQL NULL ("no response"), not the JSON value null
    provider_response: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    provider_message_id: Mapped[str | None]
    adapter: Mapped[str | None]
    inserted_at: Mapped[datetime] = _created()


class NotificationPreference(Base):
    """A recipient's choice for one notification key on one channel; no row means enabled."""

    __tablename__ = "chimeway_notification_preferences"

    id: Mapped[uuid.UUID] = _uuid_pk()
    recipient_id: Mapped[str]
    notification_key: Mapped[str]
    channel: Mapped[str]
    enabled: Mapped[bool] = mapped_column(Boolean, server_default="true")
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class CategoryPreference(Base):
    """A recipient's choice for a whole notification category; no row means enabled."""

    __tablename__ = "chimeway_category_preferences"

    id: Mapped[uuid.UUID] = _uuid_pk()
    recipient_id: Mapped[str]
    notification_category: Mapped[str]
    enabled: Mapped[bool] = mapped_column(Boolean, server_default="true")
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class PolicySettings(Base):
    """A recipient's delivery policy: quiet hours in a time zone and a cap; see :mod:`chimeway.policy`."""

    __tablename__ = "chimeway_policy_settings"

    id: Mapped[uuid.UUID] = _uuid_pk()
    recipient_id: Mapped[str]
    quiet_hours_start_minute: Mapped[int | None] = mapped_column(Integer)
    quiet_hours_end_minute: Mapped[int | None] = mapped_column(Integer)
    time_zone: Mapped[str | None]
    delivery_cap_count: Mapped[int | None] = mapped_column(Integer)
    delivery_cap_window_minutes: Mapped[int | None] = mapped_column(Integer)
    #: sends counted against the cap, still in its window (kept up to date by the dispatch claim)
    cap_sent_at: Mapped[list[datetime]] = mapped_column(ARRAY(DateTime(timezone=True)), server_default="{}")
    cap_granted: Mapped[int] = mapped_column(Integer, server_default="0")
    inserted_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class JourneyDefinition(Base):
    """A journey's steps, stored once per key and version; see :mod:`chimeway.journeys`."""

    __tablename__ = "chimeway_journey_definitions"

    id: Mapped[uuid.UUID] = _uuid_pk()
    journey_key: Mapped[str]
    journey_version: Mapped[int] = mapped_column(Integer)
    notification_key: Mapped[str]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    end_on: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    advance_on: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    stop_when_read: Mapped[bool] = mapped_column(Boolean, server_default="true")
    inserted_at: Mapped[datetime] = _created()


class JourneyRun(Base):
    """One notification's way through its journey's steps; see :mod:`chimeway.journeys`."""

    __tablename__ = "chimeway_journey_runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Notification.id, ondelete="CASCADE"))
    definition_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(JourneyDefinition.id))
    recipient_identity: Mapped[str]
    #: waiting, sending, completed or ended
    state: Mapped[str]
    current_step: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime | None]
    #: step order (as text) → that step's outcome
    outcomes: Mapped[dict[str, Any]]
    terminal_reason: Mapped[str | None]
    started_at: Mapped[datetime] = _created()
    last_transition_at: Mapped[datetime] = _created()


class JourneyTransition(Base):
    """One move of a journey run. Rows are only ever inserted."""

    __tablename__ = "chimeway_journey_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(JourneyRun.id, ondelete="CASCADE"))
    step: Mapped[int | None] = mapped_column(Integer)
    delivery_id: Mapped[uuid.UUID | None]
    from_state: Mapped[str | None]
    to_state: Mapped[str]
    reason: Mapped[str]
    context: Mapped[dict[str, Any]]
    inserted_at: Mapped[datetime] = _created()


class DigestRule(Base):
    """A digest rule's row; define rules through :func:`chimeway.digests.define_rule`."""

    __tablename__ = "chimeway_digest_rules"

    id: Mapped[uuid.UUID] = _uuid_pk()
    rule_key: Mapped[str]
    channel: Mapped[str]
    match_notification_key: Mapped[str | None]
    match_category: Mapped[str | None]
    group_by: Mapped[str | None]
    window_kind: Mapped[str]
    window_minutes: Mapped[int | None] = mapped_column(Integer)
    boundary_hour: Mapped[int | None] = mapped_column(Integer)
    boundary_minute: Mapped[int | None] = mapped_column(Integer)
    boundary_time_zone: Mapped[str | None]
    inserted_at: Mapped[datetime] = _created()


class DigestBucket(Base):
    """The deliveries one rule holds for one recipient, group and window, until it is flushed."""

    __tablename__ = "chimeway_digest_buckets"

    id: Mapped[uuid.UUID] = _uuid_pk()
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(DigestRule.id, ondelete="CASCADE"))
    recipient_id: Mapped[str]
    recipient_type: Mapped[str]
    channel: Mapped[str]
    grouping_value: Mapped[str] = mapped_column(server_default="")
    window_starts_at: Mapped[datetime]
    window_ends_at: Mapped[datetime]
    member_count: Mapped[int] = mapped_column(Integer, server_default="0")
    first_held_at: Mapped[datetime] = _created()
    last_held_at: Mapped[datetime] = _created()
    #: pending, then emitted (a digest delivery was made) or empty
    flush_state: Mapped[str] = mapped_column(server_default="pending")
    emitted_at: Mapped[datetime | None]
    digest_delivery_id: Mapped[uuid.UUID | None]


class DigestMembership(Base):
    """A held delivery's place in its bucket (what became of it is on the delivery and the bucket)."""

    __tablename__ = "chimeway_digest_memberships"

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(Delivery.id, ondelete="CASCADE"), primary_key=True
    )
    bucket_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(DigestBucket.id, ondelete="CASCADE"))
    inserted_at: Mapped[datetime] = _created()
