"""Recipients' opt-outs: per notification and channel, and per category. No row means enabled."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ._session import atomic
from .errors import InvalidValue
from .models import CategoryPreference, NotificationPreference

__all__ = [
    "category_enabled",
    "channel_enabled",
    "upsert_category_preference",
    "upsert_channel_preference",
]


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(name, value, "a non-empty string")
    return value.strip()


def upsert_channel_preference(
    session: Session, recipient_id: str, notification_key: str, channel: str, *, enabled: bool
) -> None:
    """Record whether ``recipient_id`` wants ``notification_key`` on ``channel`` (last choice wins)."""
    statement = pg_insert(NotificationPreference).values(
        recipient_id=_text("recipient_id", recipient_id),
        notification_key=_text("notification_key", notification_key),
        channel=_text("channel", channel),
        enabled=bool(enabled),
    )
    with atomic(session):
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[
                    NotificationPreference.recipient_id,
                    NotificationPreference.notification_key,
                    NotificationPreference.channel,
                ],
                set_={"enabled": statement.excluded.enabled, "updated_at": func.now()},
            )
        )


def upsert_category_preference(session: Session, recipient_id: str, category: str, *, enabled: bool) -> None:
    """Record whether ``recipient_id`` wants notifications of ``category`` at all."""
    statement = pg_insert(CategoryPreference).values(
        recipient_id=_text("recipient_id", recipient_id),
        notification_category=_text("category", category),
        enabled=bool(enabled),
    )
    with atomic(session):
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[CategoryPreference.recipient_id, CategoryPreference.notification_category],
                set_={"enabled": statement.excluded.enabled, "updated_at": func.now()},
            )
        )


def channel_enabled(session: Session, recipient_id: str, notification_key: str, channel: str) -> bool:
    """Whether ``recipient_id`` accepts ``notification_key`` on ``channel``; True unless they opted out."""
    enabled = session.scalar(
        select(NotificationPreference.enabled).where(
            NotificationPreference.recipient_id == recipient_id,
            NotificationPreference.notification_key == notification_key,
            NotificationPreference.channel == channel,
        )
    )
    return enabled is not False


def category_enabled(session: Session, recipient_id: str, category: str) -> bool:
    """Whether ``recipient_id`` accepts notifications of ``category``; True unless they opted out."""
    enabled = session.scalar(
        select(CategoryPreference.enabled).where(
            CategoryPreference.recipient_id == recipient_id,
            CategoryPreference.notification_category == category,
        )
    )
    return enabled is not False
