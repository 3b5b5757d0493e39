"""What each inbox operation asks the database and makes of the answers, with no I/O of its own.

Every operation is a generator (a *plan*): it validates its arguments, yields a statement, is
sent back the rows, and returns its result (or yields the next statement first). The sync and
async functions of :mod:`chimeway.inbox`, and :func:`chimeway.inbox.listen` on a bare psycopg
connection, run the same plans through their own executors (:mod:`chimeway.inbox.run`).

Statements are SQLAlchemy Core where they vary with the call (the list's filters each decide
which partial index serves it, so each combination is its own statement text, never one
statement with optional predicates that a generic plan could not match to an index) and plain
SQL from ``chimeway/queries/`` for the change feed, which must also run on a bare psycopg
connection.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, Integer, Select, bindparam, func, select, tuple_, union_all, update
from sqlalchemy.sql import Executable

from ..errors import NotificationNotFound
from ..models import Base, Event, Notification
from .values import (
    DEFAULT_PAGE_SIZE,
    ChangePosition,
    InboxChanges,
    InboxCounts,
    InboxItem,
    InboxPage,
    PagePosition,
    check_category,
    check_identity,
    check_limit,
    check_notification_id,
)

__all__ = [
    "CoreQuery",
    "Mark",
    "PlainQuery",
    "Plan",
    "change_cursor_plan",
    "changes_plan",
    "channel_plan",
    "counts_plan",
    "list_plan",
    "mark_all_plan",
    "mark_plan",
]

T = TypeVar("T")
Rows = Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class CoreQuery:
    """A SQLAlchemy Core statement (built once per shape, cached) with this call's parameters."""

    statement: Executable
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PlainQuery:
    """A statement of ``chimeway/queries/`` by file name, with its parameters."""

    name: str
    params: Mapping[str, Any]


Step = CoreQuery | PlainQuery
#: an operation: yields statements, is sent their rows, returns its result
Plan = Generator[Step, Rows, T]

_notifications = Base.metadata.tables[Notification.__tablename__]
_events = Base.metadata.tables[Event.__tablename__]
_n = _notifications.c
_e = _events.c
_ITEM_COLUMNS = (
    _n.id,
    _n.event_id,
    _e.notification_key,
    _n.category,
    _n.metadata,
    _n.seen_at,
    _n.read_at,
    _n.archived_at,
    _n.inserted_at,
)


def _item(row: Sequence[Any], offset: int = 0) -> InboxItem:
    return InboxItem(*row[offset : offset + len(_ITEM_COLUMNS)])


# -- reading ----------------------------------------------------------------------------------


def _branch(*, archived: bool, unread_only: bool, by_category: bool, after_cursor: bool) -> Select[Any]:
    # Literal IS [NOT] NULL predicates, so the planner proves the partial index's predicate
    # (inbox, unread, category or archived) from the statement itself, with or without statistics.
    where: list[ColumnElement[bool]] = [
        _n.recipient_identity == bindparam("identity"),
        _n.archived_at.is_not(None) if archived else _n.archived_at.is_(None),
    ]
    if unread_only:
        where.append(_n.read_at.is_(None))
    if by_category:
        where.append(_n.category == bindparam("category"))
    if after_cursor:
        after = tuple_(
            bindparam("after_at", type_=_n.inserted_at.type), bindparam("after_id", type_=_n.id.type)
        )
        where.append(tuple_(_n.inserted_at, _n.id) < after)
    return (
        select(*_ITEM_COLUMNS)
        .join_from(_notifications, _events, _e.id == _n.event_id)
        .where(*where)
        .order_by(_n.inserted_at.desc(), _n.id.desc())
        .limit(bindparam("fetch", type_=Integer))
    )


@functools.cache
def _list_statement(
    include_archived: bool, unread_only: bool, by_category: bool, after_cursor: bool
) -> Select[Any]:
    """The page statement of one combination of options: sixteen shapes, each built once."""
    options = {"unread_only": unread_only, "by_category": by_category, "after_cursor": after_cursor}
    live = _branch(archived=False, **options)
    if not include_archived:
        return live
    # Newest first across the live inbox and the archive, each read through its own index and
    # cut at the page size, then merged.
    both = union_all(live, _branch(archived=True, **options)).subquery()
    return (
        select(*both.c)
        .order_by(both.c.inserted_at.desc(), both.c.id.desc())
        .limit(bindparam("fetch", type_=Integer))
    )


def list_plan(
    identity: object,
    *,
    unread_only: bool = False,
    include_archived: bool = False,
    category: object = None,
    limit: object = DEFAULT_PAGE_SIZE,
    before: object = None,
) -> Plan[InboxPage]:
    """One page of the inbox, newest first, after the page that ended at ``before``."""
    params: dict[str, Any] = {"identity": check_identity(identity)}
    category = check_category(category)
    size = check_limit(limit)
    after = None if before is None else PagePosition.decode(before)
    if category is not None:
        params["category"] = category
    if after is not None:
        params.update(after_at=after.inserted_at, after_id=after.id)
    # One row more than the page says whether another page follows, without a count.
    params["fetch"] = size + 1
    statement = _list_statement(
        bool(include_archived), bool(unread_only), category is not None, after is not None
    )
    rows = yield CoreQuery(statement, params)
    items = tuple(_item(row) for row in rows[:size])
    following = PagePosition(items[-1].inserted_at, items[-1].id).encode() if len(rows) > size else None
    return InboxPage(items, following)


_COUNTS = select(func.count().filter(_n.seen_at.is_(None)), func.count()).where(
    _n.recipient_identity == bindparam("identity"), _n.read_at.is_(None), _n.archived_at.is_(None)
)


def counts_plan(identity: object) -> Plan[InboxCounts]:
    """Unseen and unread, archived left out: one index-only scan of the unread inbox."""
    rows = yield CoreQuery(_COUNTS, {"identity": check_identity(identity)})
    unseen, unread = rows[0]
    return InboxCounts(unseen=int(unseen), unread=int(unread))


# -- changing ---------------------------------------------------------------------------------

Mark = Literal["seen", "read", "unread", "archived", "unarchived"]
# mark → (column, whether the mark sets it (else clears it))
_MARKS: dict[str, tuple[str, bool]] = {
    "seen": ("seen_at", True),
    "read": ("read_at", True),
    "unread": ("read_at", False),
    "archived": ("archived_at", True),
    "unarchived": ("archived_at", False),
}


# (bind names that are not column names: an UPDATE reserves those for its SET clause)
_MINE = (_n.id == bindparam("notification_id"), _n.recipient_identity == bindparam("identity"))
_EXISTS = select(_n.id).where(*_MINE)


@functools.cache
def _mark_statement(mark: Mark) -> Executable:
    column_name, setting = _MARKS[mark]
    column = _n[column_name]
    return (
        update(_notifications)
        .where(*_MINE, column.is_(None) if setting else column.is_not(None))
        .values({column_name: func.now() if setting else None})
        .returning(_n.id)
    )


def mark_plan(identity: object, notification_id: object, mark: Mark) -> Plan[bool]:
    """Set (or clear) one timestamp of one of the recipient's notifications; True if it changed.

    Setting keeps a timestamp already there (marking read twice keeps the first read_at), so a
    repeat changes nothing, returns False and wakes no listener.
    """
    params = {"identity": check_identity(identity), "notification_id": check_notification_id(notification_id)}
    changed = yield CoreQuery(_mark_statement(mark), params)
    if changed:
        return True
    # Nothing changed: already so, or not this recipient's (which looks exactly like not existing).
    exists = yield CoreQuery(_EXISTS, params)
    if not exists:
        raise NotificationNotFound(params["notification_id"])
    return False


@functools.cache
def _mark_all_statement(mark: Literal["seen", "read"]) -> Executable:
    column_name, _ = _MARKS[mark]
    where = [_n.recipient_identity == bindparam("identity"), _n.read_at.is_(None), _n.archived_at.is_(None)]
    if mark == "seen":
        where.append(_n.seen_at.is_(None))
    return update(_notifications).where(*where).values({column_name: func.now()}).returning(_n.id)


def mark_all_plan(identity: object, mark: Literal["seen", "read"]) -> Plan[int]:
    """Mark everything the counts count as unseen (or unread) seen (or read); how many changed.

    Both walk the unread inbox's index. Archived notifications are left as they are, as the counts
    leave them out; so is a notification already read when marking all seen (it is not unseen).
    """
    rows = yield CoreQuery(_mark_all_statement(mark), {"identity": check_identity(identity)})
    return len(rows)


# -- the change feed --------------------------------------------------------------------------


def changes_plan(identity: object, cursor: object, limit: object) -> Plan[InboxChanges]:
    """The recipient's changes after ``cursor`` (see ``queries/inbox_changes_since.sql``)."""
    identity = check_identity(identity)
    position = ChangePosition.decode(cursor)
    size = check_limit(limit)
    rows = yield PlainQuery(
        "inbox_changes_since",
        {
            "identity": identity,
            "xid": position.xid,
            "id": position.id,
            # a cursor at a row: that row's transaction had ended, so the horizon was past it
            "floor": position.xid + (position.id is not None),
            "limit": size,
        },
    )
    horizon, pending = rows[0][0], rows[0][1]
    changed = [row for row in rows if row[2] is not None]
    items = tuple(_item(row, offset=2) for row in changed)
    if len(changed) == size:
        # Cut short by the limit: go on right after the last row returned.
        last = changed[-1]
        following = ChangePosition(int(last[-1]), last[2])
    else:
        # Every change below the horizon has been returned: go on from the horizon itself.
        following = ChangePosition(int(horizon))
    return InboxChanges(items, following.encode(), more=len(changed) == size, pending=bool(pending))


def change_cursor_plan() -> Plan[str]:
    """The feed's position now: changes from here on are still to come."""
    rows = yield PlainQuery("inbox_changes_cursor", {})
    return ChangePosition(int(rows[0][0])).encode()


def channel_plan(schema: str, identity: object) -> Plan[str]:
    """The NOTIFY channel that wakes ``identity``'s listeners in ``schema``."""
    identity = check_identity(identity)
    rows = yield PlainQuery("inbox_channel", {"schema": schema, "identity": identity})
    return str(rows[0][0])
