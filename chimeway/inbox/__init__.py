"""The inbox: a recipient's notifications, their seen/read/archived state, and a feed of changes.

Every function takes the recipient's ``identity`` (the notification's ``recipient_identity``,
e.g. ``"user:42"``) and touches only that recipient's notifications: another recipient's
notification is :class:`~chimeway.errors.NotificationNotFound`, exactly as one that does not
exist, and nothing changes. Sync functions take a SQLAlchemy ``Session``; each has an async twin
(``a`` prefix) taking an ``AsyncSession``. Both run one implementation (:mod:`.plans`).

Reading:

- :func:`list_for_recipient` — one page, newest first, by keyset (``before`` is the previous
  page's ``next_cursor``; never OFFSET, so page 1,000 costs what page 1 does).
- :func:`counts` — unseen and unread totals, archived left out.

Changing (a write joins the caller's open transaction, else commits on its own): :func:`mark_seen`,
:func:`mark_read`, :func:`mark_unread`, :func:`archive`, :func:`unarchive` (True when the call
changed the notification, False when it already was so: marking read twice keeps the first
read_at), :func:`mark_all_seen` and :func:`mark_all_read` (how many changed).

Following changes: every change (a notification created, seen, read, archived, …, by this module
or any other statement) NOTIFYs the recipient's channel when it commits, and
:func:`changes_since` returns what changed after a cursor. Take :func:`changes_cursor` before
reading the page a client shows, then follow from it; :func:`listen` does both on a psycopg
connection. Changes come at least once: one already on the page may come again. A change comes
once every older write transaction of the database has ended (that is how none is skipped), so
a write transaction left open in the database holds the feed back while it stays open: keep
them short (``idle_in_transaction_session_timeout`` bounds a forgotten one). Transactions of
other databases on the same server hold nothing back.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from . import plans
from .listen import InboxListener, listen
from .run import arun, awrite, run, write
from .values import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    InboxChanges,
    InboxCounts,
    InboxItem,
    InboxPage,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "InboxChanges",
    "InboxCounts",
    "InboxItem",
    "InboxListener",
    "InboxPage",
    "aarchive",
    "achanges_cursor",
    "achanges_since",
    "acounts",
    "alist_for_recipient",
    "amark_all_read",
    "amark_all_seen",
    "amark_read",
    "amark_seen",
    "amark_unread",
    "archive",
    "aunarchive",
    "changes_cursor",
    "changes_since",
    "counts",
    "list_for_recipient",
    "listen",
    "mark_all_read",
    "mark_all_seen",
    "mark_read",
    "mark_seen",
    "mark_unread",
    "unarchive",
]

NotificationId = uuid.UUID | str


def list_for_recipient(
    session: Session,
    identity: str,
    *,
    unread_only: bool = False,
    include_archived: bool = False,
    category: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    before: str | None = None,
) -> InboxPage:
    """One page of ``identity``'s inbox, newest first (by inserted_at, then id).

    Archived notifications are left out unless ``include_archived``; ``unread_only`` keeps the
    unread; ``category`` keeps one category. ``limit`` above :data:`MAX_PAGE_SIZE` is clamped
    to it. ``before`` is the ``next_cursor`` of the previous page (an
    :class:`~chimeway.errors.InvalidCursor` if it is anything else); ``next_cursor`` is None on
    the last page.
    """
    plan = plans.list_plan(
        identity,
        unread_only=unread_only,
        include_archived=include_archived,
        category=category,
        limit=limit,
        before=before,
    )
    return run(session, plan)


async def alist_for_recipient(
    session: AsyncSession,
    identity: str,
    *,
    unread_only: bool = False,
    include_archived: bool = False,
    category: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    before: str | None = None,
) -> InboxPage:
    """The async twin of :func:`list_for_recipient`."""
    plan = plans.list_plan(
        identity,
        unread_only=unread_only,
        include_archived=include_archived,
        category=category,
        limit=limit,
        before=before,
    )
    return await arun(session, plan)


def counts(session: Session, identity: str) -> InboxCounts:
    """``identity``'s unseen and unread totals, archived notifications left out.

    Unseen counts notifications neither seen nor read. Read through the unread inbox's index, so
    the cost grows with the unread, not with the history.
    """
    return run(session, plans.counts_plan(identity))


async def acounts(session: AsyncSession, identity: str) -> InboxCounts:
    """The async twin of :func:`counts`."""
    return await arun(session, plans.counts_plan(identity))


def mark_seen(session: Session, identity: str, notification_id: NotificationId) -> bool:
    """Mark one of ``identity``'s notifications seen now; False if it already was (seen_at kept)."""
    return write(session, plans.mark_plan(identity, notification_id, "seen"))


async def amark_seen(session: AsyncSession, identity: str, notification_id: NotificationId) -> bool:
    """The async twin of :func:`mark_seen`."""
    return await awrite(session, plans.mark_plan(identity, notification_id, "seen"))


def mark_read(session: Session, identity: str, notification_id: NotificationId) -> bool:
    """Mark one of ``identity``'s notifications read now; False if it already was (read_at kept).

    Only read_at is set: a read notification no longer counts as unseen either way.
    """
    return write(session, plans.mark_plan(identity, notification_id, "read"))


async def amark_read(session: AsyncSession, identity: str, notification_id: NotificationId) -> bool:
    """The async twin of :func:`mark_read`."""
    return await awrite(session, plans.mark_plan(identity, notification_id, "read"))


def mark_unread(session: Session, identity: str, notification_id: NotificationId) -> bool:
    """Clear the read_at of one of ``identity``'s notifications; False if it was not read."""
    return write(session, plans.mark_plan(identity, notification_id, "unread"))


async def amark_unread(session: AsyncSession, identity: str, notification_id: NotificationId) -> bool:
    """The async twin of :func:`mark_unread`."""
    return await awrite(session, plans.mark_plan(identity, notification_id, "unread"))


def archive(session: Session, identity: str, notification_id: NotificationId) -> bool:
    """Archive one of ``identity``'s notifications now; False if it already was (archived_at kept)."""
    return write(session, plans.mark_plan(identity, notification_id, "archived"))


async def aarchive(session: AsyncSession, identity: str, notification_id: NotificationId) -> bool:
    """The async twin of :func:`archive`."""
    return await awrite(session, plans.mark_plan(identity, notification_id, "archived"))


def unarchive(session: Session, identity: str, notification_id: NotificationId) -> bool:
    """Bring one of ``identity``'s notifications back from the archive; False if it was not there."""
    return write(session, plans.mark_plan(identity, notification_id, "unarchived"))


async def aunarchive(session: AsyncSession, identity: str, notification_id: NotificationId) -> bool:
    """The async twin of :func:`unarchive`."""
    return await awrite(session, plans.mark_plan(identity, notification_id, "unarchived"))


def mark_all_read(session: Session, identity: str) -> int:
    """Mark every unread notification in ``identity``'s inbox read; returns how many changed.

    Archived notifications are left as they are (the counts leave them out too).
    """
    return write(session, plans.mark_all_plan(identity, "read"))


async def amark_all_read(session: AsyncSession, identity: str) -> int:
    """The async twin of :func:`mark_all_read`."""
    return await awrite(session, plans.mark_all_plan(identity, "read"))


def mark_all_seen(session: Session, identity: str) -> int:
    """Mark every notification :func:`counts` calls unseen seen; returns how many changed."""
    return write(session, plans.mark_all_plan(identity, "seen"))


async def amark_all_seen(session: AsyncSession, identity: str) -> int:
    """The async twin of :func:`mark_all_seen`."""
    return await awrite(session, plans.mark_all_plan(identity, "seen"))


def changes_since(
    session: Session, identity: str, cursor: str, *, limit: int = DEFAULT_PAGE_SIZE
) -> InboxChanges:
    """What changed in ``identity``'s inbox after ``cursor``, oldest change first.

    ``cursor`` comes from :func:`changes_cursor` or a previous call's ``InboxChanges.cursor``.
    A change is returned once every transaction older than it has ended, so none is skipped
    because it committed late; until then the result says ``pending``. See
    :class:`~chimeway.inbox.InboxChanges`.
    """
    return run(session, plans.changes_plan(identity, cursor, limit))


async def achanges_since(
    session: AsyncSession, identity: str, cursor: str, *, limit: int = DEFAULT_PAGE_SIZE
) -> InboxChanges:
    """The async twin of :func:`changes_since`."""
    return await arun(session, plans.changes_plan(identity, cursor, limit))


def changes_cursor(session: Session) -> str:
    """The change feed's position now, for any recipient: :func:`changes_since` from it returns
    every change not yet committed when it was taken (and maybe some just before it: changes
    come at least once).

    Take it *before* reading the page a client shows (or in the same REPEATABLE READ
    transaction): a change committed between the two then comes once more, never not at all.
    """
    return run(session, plans.change_cursor_plan())


async def achanges_cursor(session: AsyncSession) -> str:
    """The async twin of :func:`changes_cursor`."""
    return await arun(session, plans.change_cursor_plan())
