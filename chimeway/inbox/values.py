"""The inbox's values: items, pages, counts, change batches, and the opaque cursors between pages.

A cursor is a short URL-safe string a client hands back unchanged. A page cursor holds the
position (inserted_at, id) of the last item of a page; a change cursor holds a position
(changed_xid, id) in the change feed. Each starts with its own tag, so one passed where the
other belongs is refused by name instead of being misread.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InvalidCursor, InvalidValue

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ChangePosition",
    "InboxChanges",
    "InboxCounts",
    "InboxItem",
    "InboxPage",
    "PagePosition",
]

#: items per page when the caller names no limit
DEFAULT_PAGE_SIZE = 50
#: the most items (or changes) one call returns; a larger limit is clamped to it
MAX_PAGE_SIZE = 200

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PAGE_TAG = b"p"
_CHANGE_TAG = b"c"
_NO_ID = b"\x00" * 16  # a change cursor at a horizon: no id, every change of that xid is to come
_PAGE_LAYOUT = struct.Struct(">cq16s")  # tag, inserted_at in microseconds since 1970, id
_CHANGE_LAYOUT = struct.Struct(">cq?16s")  # tag, changed_xid, has an id, id


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One notification as its recipient's inbox shows it."""

    id: uuid.UUID
    event_id: uuid.UUID
    notification_key: str
    #: the notifier's category, None when it has none
    category: str | None
    #: what the notifier built for this recipient (the notification's ``metadata`` column)
    content: dict[str, Any]
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None
    inserted_at: datetime

    @property
    def seen(self) -> bool:
        return self.seen_at is not None

    @property
    def read(self) -> bool:
        return self.read_at is not None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of an inbox, newest first, and the cursor of the next (None: this is the last)."""

    items: tuple[InboxItem, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class InboxCounts:
    """A recipient's badge numbers, archived notifications left out.

    ``unread``: not read. ``unseen``: neither seen nor read (one already read is not new).
    """

    unseen: int
    unread: int


@dataclass(frozen=True, slots=True)
class InboxChanges:
    """What changed in an inbox after a change cursor, oldest change first.

    ``items`` are the notifications created or changed (seen, read, archived, …), each as it is
    now; one that changed twice appears once. Pass ``cursor`` to the next call. ``more``: the
    limit cut the batch short, ask again at once. ``pending``: a newer change is committed but held
    back until an older transaction ends (so that no change is ever skipped); ask again shortly.
    """

    items: tuple[InboxItem, ...]
    cursor: str
    more: bool
    pending: bool


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page ended: the (inserted_at, id) of its last item."""

    inserted_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        micros = (self.inserted_at - _EPOCH) // _MICROSECOND
        return _b64(_PAGE_LAYOUT.pack(_PAGE_TAG, micros, self.id.bytes))

    @classmethod
    def decode(cls, cursor: object) -> PagePosition:
        _tag, micros, raw_id = _unpack(cursor, _PAGE_LAYOUT, _PAGE_TAG, "list_for_recipient's next_cursor")
        try:
            inserted_at = _EPOCH + micros * _MICROSECOND
        except OverflowError:
            raise _invalid(cursor, "list_for_recipient's next_cursor") from None
        return cls(inserted_at, uuid.UUID(bytes=raw_id))


@dataclass(frozen=True, slots=True)
class ChangePosition:
    """A place in the change feed: after (xid, id), or from transaction xid on when id is None."""

    xid: int
    id: uuid.UUID | None = None

    def encode(self) -> str:
        raw_id = _NO_ID if self.id is None else self.id.bytes
        return _b64(_CHANGE_LAYOUT.pack(_CHANGE_TAG, self.xid, self.id is not None, raw_id))

    @classmethod
    def decode(cls, cursor: object) -> ChangePosition:
        _tag, xid, has_id, raw_id = _unpack(
            cursor, _CHANGE_LAYOUT, _CHANGE_TAG, "a change cursor (changes_cursor, InboxChanges.cursor)"
        )
        if xid < 0 or (not has_id and raw_id != _NO_ID):
            raise _invalid(cursor, "a change cursor (changes_cursor, InboxChanges.cursor)")
        return cls(xid, uuid.UUID(bytes=raw_id) if has_id else None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _invalid(cursor: object, expected: str) -> InvalidCursor:
    shown = cursor if not isinstance(cursor, str) or len(cursor) <= 80 else cursor[:77] + "..."
    return InvalidCursor(f"cursor must be {expected}, passed back unchanged; got {shown!r}")


def _unpack(cursor: object, layout: struct.Struct, tag: bytes, expected: str) -> tuple[Any, ...]:
    if not isinstance(cursor, str) or not cursor.isascii():
        raise _invalid(cursor, expected)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(cursor, expected) from None
    if len(raw) != layout.size or raw[:1] != tag or _b64(raw) != cursor:
        raise _invalid(cursor, expected)
    return layout.unpack(raw)


def check_identity(identity: object) -> str:
    """The recipient identity as given, if it is a non-blank string."""
    if not isinstance(identity, str) or not identity.strip():
        raise InvalidValue("identity", identity, "a non-blank string such as 'user:42'")
    return identity


def check_category(category: object) -> str | None:
    if category is None:
        return None
    if not isinstance(category, str) or not category.strip():
        raise InvalidValue("category", category, "None or a non-blank string")
    return category


def check_limit(limit: object) -> int:
    """``limit`` clamped to :data:`MAX_PAGE_SIZE`; refused unless it is a positive integer."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidValue("limit", limit, f"a positive integer (at most {MAX_PAGE_SIZE} are returned)")
    return min(limit, MAX_PAGE_SIZE)


def check_notification_id(notification_id: object) -> uuid.UUID:
    if isinstance(notification_id, uuid.UUID):
        return notification_id
    if isinstance(notification_id, str):
        try:
            return uuid.UUID(notification_id)
        except ValueError:
            pass
    raise InvalidValue("notification_id", notification_id, "a UUID (or its string)")
