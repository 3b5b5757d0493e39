"""Digest rules: which deliveries a digest holds, how it groups them, and when its window ends.

A rule matches a notification key *or* a category on one channel. Matching deliveries are held
(``digest_held``) in a bucket per recipient, group and window instead of being sent; when the
window ends, one digest delivery carries them all (:mod:`chimeway.digests.flush`).

Every field is checked when the rule is defined, so a bad rule never reaches planning: a window of
0, an unknown time zone, a rule overlapping another (same channel and key, or same channel and
category) are refused with :class:`DigestRuleError` naming the field.
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg.errors
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from pgqueue.targets import async_writer, sync_writer

from .._session import mapped_schema
from ..errors import ChimewayError
from ..store import queries_for

__all__ = ["DigestRule", "DigestRuleError", "WindowKind", "adefine_rule", "define_rule", "list_rules"]

WindowKind = Literal["fixed", "daily"]
_MAX_TEXT: Final = 128
_DAILY_AT: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MAX_WINDOW_MINUTES: Final = 7 * 24 * 60
_COLUMNS: Final = (
    "channel",
    "match_notification_key",
    "match_category",
    "group_by",
    "window_kind",
    "window_minutes",
    "boundary_hour",
    "boundary_minute",
    "boundary_time_zone",
)


class DigestRuleError(ChimewayError, ValueError):
    """A digest rule is invalid or overlaps another; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"digest rule {field}: {message}")
        self.field = field


def _text(field: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DigestRuleError(field, f"must be a non-blank string, got {value!r}")
    if "\x00" in value or len(value.strip()) > _MAX_TEXT:
        raise DigestRuleError(
            field, f"must be at most {_MAX_TEXT} characters without NUL, got {value[:40]!r}"
        )
    return value.strip()


@dataclass(frozen=True, slots=True)
class DigestRule:
    """One digest rule, validated on construction.

    ``match_notification_key`` or ``match_category`` (exactly one) selects deliveries on
    ``channel``. ``group_by`` names a key of the trigger's params whose value splits a recipient's
    bucket (None: one bucket per recipient). The window is either ``window_minutes`` (fixed windows
    aligned on the epoch: 60 closes at every full hour) or ``daily_at`` (``"HH:MM"``) in
    ``time_zone`` (an IANA name): the day's window closes at that local time.
    """

    rule_key: str
    channel: str
    match_notification_key: str | None = None
    match_category: str | None = None
    group_by: str | None = None
    window_minutes: int | None = None
    daily_at: str | None = None
    time_zone: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "rule_key", _text("rule_key", self.rule_key))
        set_(self, "channel", _text("channel", self.channel))
        key = _text("match_notification_key", self.match_notification_key, optional=True)
        category = _text("match_category", self.match_category, optional=True)
        if (key is None) == (category is None):
            raise DigestRuleError(
                "match_notification_key", "give exactly one of match_notification_key and match_category"
            )
        set_(self, "match_notification_key", key)
        set_(self, "match_category", category)
        set_(self, "group_by", _text("group_by", self.group_by, optional=True))
        self._check_window()

    def _check_window(self) -> None:
        minutes, daily_at, zone = self.window_minutes, self.daily_at, self.time_zone
        if (minutes is None) == (daily_at is None):
            raise DigestRuleError("window_minutes", "give exactly one of window_minutes and daily_at")
        if minutes is not None:
            if isinstance(minutes, bool) or not isinstance(minutes, int):
                raise DigestRuleError("window_minutes", f"must be an integer, got {minutes!r}")
            if not 1 <= minutes <= _MAX_WINDOW_MINUTES:
                raise DigestRuleError(
                    "window_minutes", f"must be 1..{_MAX_WINDOW_MINUTES} (a week), got {minutes!r}"
                )
            if zone is not None:
                raise DigestRuleError("time_zone", "applies only to a daily window (daily_at)")
            return
        if not isinstance(daily_at, str) or not _DAILY_AT.match(daily_at):
            raise DigestRuleError(
                "daily_at", f"must be a local time 'HH:MM' (00:00..23:59), got {daily_at!r}"
            )
        if not isinstance(zone, str) or not zone.strip():
            raise DigestRuleError(
                "time_zone", f"must be an IANA time zone name for a daily window, got {zone!r}"
            )
        try:
            zoneinfo.ZoneInfo(zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise DigestRuleError("time_zone", f"is not a known IANA time zone, got {zone!r}") from None

    @property
    def window_kind(self) -> WindowKind:
        return "fixed" if self.window_minutes is not None else "daily"

    def row(self) -> dict[str, Any]:
        """The rule as the columns of ``chimeway_digest_rules``."""
        hour = minute = None
        if self.daily_at is not None:
            hour, minute = (int(part) for part in self.daily_at.split(":"))
        return {
            "rule_key": self.rule_key,
            "channel": self.channel,
            "match_notification_key": self.match_notification_key,
            "match_category": self.match_category,
            "group_by": self.group_by,
            "window_kind": self.window_kind,
            "window_minutes": self.window_minutes,
            "boundary_hour": hour,
            "boundary_minute": minute,
            "boundary_time_zone": self.time_zone,
        }

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> DigestRule:
        """A rule from ``digest_rules_list.sql``'s columns (after the id)."""
        (key, channel, match_key, match_category, group_by, kind, minutes, hour, minute, zone) = row
        daily_at = None if kind == "fixed" else f"{hour:02d}:{minute:02d}"
        return cls(key, channel, match_key, match_category, group_by, minutes, daily_at, zone)


def _overlap(exc: psycopg.errors.UniqueViolation, rule: DigestRule) -> DigestRuleError:
    constraint = exc.diag.constraint_name or ""
    if constraint.endswith("category_match"):
        field, value = "match_category", rule.match_category
    else:
        field, value = "match_notification_key", rule.match_notification_key
    return DigestRuleError(
        field, f"another rule already holds {value!r} on channel {rule.channel!r} (rules must not overlap)"
    )


def _checked(rule: DigestRule, rows: list[tuple[Any, ...]]) -> uuid.UUID:
    rule_id, *stored = rows[0]
    wanted = rule.row()
    if tuple(stored) != tuple(wanted[c] for c in _COLUMNS):
        raise DigestRuleError("rule_key", f"{rule.rule_key!r} is already defined with other fields")
    return uuid.UUID(str(rule_id))


def _unique_violation(exc: BaseException) -> psycopg.errors.UniqueViolation | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.UniqueViolation):
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def define_rule(session: Session, rule: DigestRule) -> uuid.UUID:
    """Store ``rule`` in ``session``'s transaction (the caller commits) and return its id.

    Defining an identical rule again returns the same id; a different rule under the same key, or
    one overlapping another rule, raises :class:`DigestRuleError` and leaves the transaction usable.
    """
    if not isinstance(rule, DigestRule):
        raise DigestRuleError("rule", f"must be a chimeway.digests.DigestRule, got {rule!r}")
    queries = queries_for(mapped_schema(session.connection()))
    try:
        with session.begin_nested(), sync_writer(session) as writer:
            rows = writer.execute(queries.digest_rule_insert, rule.row())
    except Exception as exc:
        violation = _unique_violation(exc)
        if violation is None:
            raise
        raise _overlap(violation, rule) from None
    return _checked(rule, rows)


async def adefine_rule(session: AsyncSession, rule: DigestRule) -> uuid.UUID:
    """The async twin of :func:`define_rule`, in an ``AsyncSession``'s transaction."""
    if not isinstance(rule, DigestRule):
        raise DigestRuleError("rule", f"must be a chimeway.digests.DigestRule, got {rule!r}")
    connection = await session.connection()
    assert connection.sync_connection is not None
    queries = queries_for(mapped_schema(connection.sync_connection))
    try:
        async with session.begin_nested():
            async with async_writer(session) as writer:
                rows = await writer.execute(queries.digest_rule_insert, rule.row())
    except Exception as exc:
        violation = _unique_violation(exc)
        if violation is None:
            raise
        raise _overlap(violation, rule) from None
    return _checked(rule, rows)


def list_rules(session: Session) -> list[DigestRule]:
    """Every digest rule, by key."""
    queries = queries_for(mapped_schema(session.connection()))
    with sync_writer(session) as writer:
        rows = writer.execute(queries.digest_rules_list, {})
    return [DigestRule.from_row(tuple(row[1:])) for row in rows]
