"""Per-recipient delivery policies: quiet hours, a delivery cap, and the preferences, sync and async.

::

    from datetime import time, timedelta
    from chimeway import policy

    policy.upsert_settings(
        session,
        "user:42",
        quiet_hours=policy.QuietHours(time(22, 0), time(7, 0), "Europe/Paris"),
        delivery_cap=policy.DeliveryCap(5, timedelta(hours=1)),
    )
    policy.upsert_category_preference(session, "user:42", "marketing", enabled=False)
    session.commit()

The dispatch worker applies them at its perform checkpoint, in the statement that claims a batch
of deliveries (``queries/dispatch_claim.sql``), every time a delivery is about to be sent:

1. a delayed fallback whose notification was read meanwhile → ``suppressed / already_read``;
2. the recipient turned the notification off on that channel → ``suppressed / channel_disabled``,
   or its category off → ``suppressed / category_disabled`` (so a preference changed after
   planning still counts);
3. within the recipient's quiet hours (local time in their IANA zone, DST included) → deferred:
   ``orchestration_state = 'deferred'`` with ``next_eligible_at`` the end of the quiet hours; its
   dispatch job is snoozed until then (a scheduled job, no poller) and releases it;
4. the recipient already had ``count`` deliveries sent in the last ``window`` →
   ``suppressed / delivery_cap_reached``. Only a delivery's first send counts (a retry does not),
   every channel counts, and the count is kept on the recipient's settings row under its lock,
   so concurrent workers never send more than the cap between them.

Quiet hours come before the cap so that a deferred delivery is counted when it is sent, not when
it was held. A recipient with no settings row has no quiet hours and no cap; a missing preference
row means enabled.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ._session import atomic, mapped_schema
from .errors import InvalidValue
from .models import PolicySettings
from .preferences import upsert_category_preference, upsert_channel_preference
from .store import queries_for

__all__ = [
    "MAX_CAP_COUNT",
    "MAX_CAP_WINDOW",
    "DeliveryCap",
    "Policy",
    "QuietHours",
    "adelete_settings",
    "aget_settings",
    "anext_eligible_at",
    "aupsert_category_preference",
    "aupsert_channel_preference",
    "aupsert_settings",
    "delete_settings",
    "get_settings",
    "next_eligible_at",
    "upsert_category_preference",
    "upsert_channel_preference",
    "upsert_settings",
]

#: The largest cap: the send times of one window are kept on the settings row.
MAX_CAP_COUNT: Final = 10_000
#: The longest cap window.
MAX_CAP_WINDOW: Final = timedelta(days=31)
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MAX_ZONE_LENGTH: Final = 64


def _clock(name: str, value: object) -> time:
    if isinstance(value, str):
        match = _CLOCK.match(value)
        if match is None:
            raise InvalidValue(name, value, "a time of day such as time(22, 0) or '22:00'")
        return time(int(match[1]), int(match[2]))
    if not isinstance(value, time):
        raise InvalidValue(name, value, "a time of day such as time(22, 0) or '22:00'")
    if value.tzinfo is not None:
        raise InvalidValue(name, value, "a local time of day without tzinfo (the zone is time_zone)")
    if value.second or value.microsecond:
        raise InvalidValue(name, value, "a time of day in whole minutes")
    return value


def _zone(value: object) -> str:
    name = "quiet_hours.time_zone"
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ZONE_LENGTH:
        raise InvalidValue(name, value, "an IANA time zone name such as 'Europe/Paris'")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(name, value, "an IANA time zone name such as 'Europe/Paris'") from None
    return value


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No sending from ``start`` to ``end`` (local times of day, whole minutes) in ``time_zone``.

    ``start`` later than ``end`` wraps past midnight (22:00 to 07:00). ``start == end`` is refused:
    it would mean either never or always. Times may be given as ``"HH:MM"`` strings.
    """

    start: time
    end: time
    time_zone: str

    def __post_init__(self) -> None:
        start = _clock("quiet_hours.start", self.start)
        end = _clock("quiet_hours.end", self.end)
        if start == end:
            raise InvalidValue(
                "quiet_hours.end", self.end, f"a different time of day than start ({start:%H:%M})"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "time_zone", _zone(self.time_zone))

    @property
    def start_minute(self) -> int:
        return self.start.hour * 60 + self.start.minute

    @property
    def end_minute(self) -> int:
        return self.end.hour * 60 + self.end.minute


@dataclass(frozen=True, slots=True)
class DeliveryCap:
    """At most ``count`` deliveries sent to the recipient in any ``window`` (whole minutes)."""

    count: int
    window: timedelta

    def __post_init__(self) -> None:
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CAP_COUNT:
            raise InvalidValue("delivery_cap.count", count, f"an integer from 1 to {MAX_CAP_COUNT}")
        window = self.window
        if isinstance(window, int) and not isinstance(window, bool):
            window = timedelta(minutes=window)
        if not isinstance(window, timedelta) or not timedelta(minutes=1) <= window <= MAX_CAP_WINDOW:
            raise InvalidValue(
                "delivery_cap.window", self.window, f"a timedelta from 1 minute to {MAX_CAP_WINDOW.days} days"
            )
        if window % timedelta(minutes=1):
            raise InvalidValue("delivery_cap.window", self.window, "a whole number of minutes")
        object.__setattr__(self, "window", window)

    @property
    def window_minutes(self) -> int:
        return self.window // timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Policy:
    """A recipient's settings as stored: None where they have no quiet hours or no cap."""

    recipient_id: str
    quiet_hours: QuietHours | None
    delivery_cap: DeliveryCap | None


def _recipient(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidValue("recipient_id", value, "a non-empty string")
    return value.strip()


def _typed(name: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise InvalidValue(name, value, f"a chimeway.policy.{kind.__name__} or None")


def _policy(row: PolicySettings) -> Policy:
    quiet = None
    if row.time_zone is not None and row.quiet_hours_start_minute is not None:
        assert row.quiet_hours_end_minute is not None
        quiet = QuietHours(
            time(*divmod(row.quiet_hours_start_minute, 60)),
            time(*divmod(row.quiet_hours_end_minute, 60)),
            row.time_zone,
        )
    cap = None
    if row.delivery_cap_count is not None and row.delivery_cap_window_minutes is not None:
        cap = DeliveryCap(row.delivery_cap_count, timedelta(minutes=row.delivery_cap_window_minutes))
    return Policy(row.recipient_id, quiet, cap)


def _values(quiet_hours: QuietHours | None, delivery_cap: DeliveryCap | None) -> dict[str, Any]:
    return {
        "quiet_hours_start_minute": quiet_hours.start_minute if quiet_hours else None,
        "quiet_hours_end_minute": quiet_hours.end_minute if quiet_hours else None,
        "time_zone": quiet_hours.time_zone if quiet_hours else None,
        "delivery_cap_count": delivery_cap.count if delivery_cap else None,
        "delivery_cap_window_minutes": delivery_cap.window_minutes if delivery_cap else None,
    }


def upsert_settings(
    session: Session,
    recipient_id: str,
    *,
    quiet_hours: QuietHours | None = None,
    delivery_cap: DeliveryCap | None = None,
) -> Policy:
    """Set ``recipient_id``'s quiet hours and cap, replacing what they had (None: none).

    Validated before anything is written; raises :class:`~chimeway.errors.InvalidValue` naming
    the bad field. Sends already counted against a cap stay counted. Runs in the caller's
    transaction (as a savepoint) when one is open, else in one of its own.
    """
    recipient = _recipient(recipient_id)
    _typed("quiet_hours", quiet_hours, QuietHours)
    _typed("delivery_cap", delivery_cap, DeliveryCap)
    values = _values(quiet_hours, delivery_cap)
    statement = pg_insert(PolicySettings).values(recipient_id=recipient, **values)
    with atomic(session):
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[PolicySettings.recipient_id],
                set_={**{key: statement.excluded[key] for key in values}, "updated_at": func.now()},
            )
        )
    return Policy(recipient, quiet_hours, delivery_cap)


def get_settings(session: Session, recipient_id: str) -> Policy | None:
    """``recipient_id``'s settings, or None when they have none."""
    row = session.scalars(
        select(PolicySettings)
        .where(PolicySettings.recipient_id == _recipient(recipient_id))
        .execution_options(populate_existing=True)
    ).one_or_none()
    return None if row is None else _policy(row)


def delete_settings(session: Session, recipient_id: str) -> bool:
    """Remove ``recipient_id``'s settings (no quiet hours, no cap); whether there were any."""
    recipient = _recipient(recipient_id)
    with atomic(session):
        removed = session.execute(
            delete(PolicySettings)
            .where(PolicySettings.recipient_id == recipient)
            .returning(PolicySettings.id)
        ).all()
    return bool(removed)


def next_eligible_at(session: Session, recipient_id: str, at: datetime | None = None) -> datetime | None:
    """When ``recipient_id``'s quiet hours end if they hold at ``at`` (default: now), else None.

    Evaluated by the database with the function the dispatch claim defers with.
    """
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        raise InvalidValue("at", at, "a timezone-aware datetime or None")
    connection = session.connection()
    text = queries_for(mapped_schema(connection)).policy_quiet_until
    row = connection.exec_driver_sql(text, {"recipient": _recipient(recipient_id), "at": at}).first()
    return None if row is None else row[0]


# -- async twins: the same functions run on the AsyncSession's sync session -------------------------


async def aupsert_settings(
    session: AsyncSession,
    recipient_id: str,
    *,
    quiet_hours: QuietHours | None = None,
    delivery_cap: DeliveryCap | None = None,
) -> Policy:
    """The async twin of :func:`upsert_settings`."""
    return await session.run_sync(
        lambda sync: upsert_settings(sync, recipient_id, quiet_hours=quiet_hours, delivery_cap=delivery_cap)
    )


async def aget_settings(session: AsyncSession, recipient_id: str) -> Policy | None:
    """The async twin of :func:`get_settings`."""
    return await session.run_sync(get_settings, recipient_id)


async def adelete_settings(session: AsyncSession, recipient_id: str) -> bool:
    """The async twin of :func:`delete_settings`."""
    return await session.run_sync(delete_settings, recipient_id)


async def anext_eligible_at(
    session: AsyncSession, recipient_id: str, at: datetime | None = None
) -> datetime | None:
    """The async twin of :func:`next_eligible_at`."""
    return await session.run_sync(next_eligible_at, recipient_id, at)


async def aupsert_channel_preference(
    session: AsyncSession, recipient_id: str, notification_key: str, channel: str, *, enabled: bool
) -> None:
    """The async twin of :func:`~chimeway.preferences.upsert_channel_preference`."""
    await session.run_sync(
        lambda sync: upsert_channel_preference(sync, recipient_id, notification_key, channel, enabled=enabled)
    )


async def aupsert_category_preference(
    session: AsyncSession, recipient_id: str, category: str, *, enabled: bool
) -> None:
    """The async twin of :func:`~chimeway.preferences.upsert_category_preference`."""
    await session.run_sync(
        lambda sync: upsert_category_preference(sync, recipient_id, category, enabled=enabled)
    )
