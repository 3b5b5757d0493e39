"""Follow one recipient's inbox as it changes: LISTEN on its channel, read the change feed on wake-up.

A NOTIFY only rings the bell; the change feed (:func:`chimeway.inbox.changes_since`) says what
changed. So nothing is lost to a NOTIFY that arrived while the listener was busy, to one shared
with another recipient of the same channel bucket, or to a change that committed while an older
transaction was still open: the feed holds such a change back (``pending``) and the listener asks
again every ``poll_interval`` until it is released.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
from psycopg import sql

from ..errors import InvalidValue
from .plans import change_cursor_plan, changes_plan, channel_plan
from .run import arun_on_connection
from .values import DEFAULT_PAGE_SIZE, ChangePosition, InboxChanges, check_identity, check_limit

__all__ = ["InboxListener", "listen"]


class InboxListener:
    """The changes of one recipient's inbox, batch after batch, as they commit (an endless async
    iterator). Made by :func:`listen`; :attr:`cursor` is where it stands, to resume from later."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        schema: str,
        identity: str,
        cursor: str,
        poll_interval: float,
        idle_interval: float,
        limit: int,
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._identity = identity
        self._poll_interval = poll_interval
        self._idle_interval = idle_interval
        self._limit = limit
        self._wait: float | None = None  # None: ask the feed at once
        #: the change cursor after the last batch returned
        self.cursor = cursor
        #: whether the feed last said a change is held back behind an older transaction
        self.pending = False

    def __aiter__(self) -> InboxListener:
        return self

    async def __anext__(self) -> InboxChanges:
        while True:
            if self._wait is not None:
                await self._wake_up(self._wait)
            plan = changes_plan(self._identity, self.cursor, self._limit)
            changes = await arun_on_connection(self._conn, self._schema, plan)
            self.cursor = changes.cursor
            self.pending = changes.pending
            if changes.more:
                self._wait = None
            else:
                self._wait = self._poll_interval if changes.pending else self._idle_interval
            if changes.items:
                return changes

    async def _wake_up(self, timeout: float) -> None:
        # Returns on the first batch of notifications (all of it is consumed) or at the timeout.
        # Notifications that arrived while the feed was being read are psycopg's backlog and
        # come out at once.
        notifications = self._conn.notifies(timeout=timeout, stop_after=1)
        async with contextlib.aclosing(notifications):
            async for _ in notifications:
                pass


def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidValue(name, value, "a positive number of seconds")
    return float(value)


@contextlib.asynccontextmanager
async def listen(
    conn: psycopg.AsyncConnection[Any],
    identity: str,
    *,
    schema: str = "public",
    cursor: str | None = None,
    poll_interval: float = 0.5,
    idle_interval: float = 30.0,
    limit: int = DEFAULT_PAGE_SIZE,
) -> AsyncIterator[InboxListener]:
    """LISTEN for ``identity``'s inbox changes on ``conn``; iterate the listener for each batch.

    ``conn`` is a psycopg ``AsyncConnection`` in autocommit mode (PostgreSQL delivers
    notifications only between transactions), used by nothing else while the listener is open.
    ``schema`` is where Chimeway's tables are. The listener starts after ``cursor`` (a change
    cursor from :func:`chimeway.inbox.changes_cursor` taken before the page the client shows, or
    a listener's :attr:`~InboxListener.cursor`), else from now. It is subscribed as soon as the
    ``async with`` body starts, and UNLISTENs when it ends::

        async with inbox.listen(conn, "user:42", schema="app") as changes:
            async for batch in changes:
                push_to_browser(batch.items)

    It wakes on each NOTIFY, re-reads every ``poll_interval`` seconds while a change is held back
    behind an older transaction, and at least every ``idle_interval`` seconds regardless.
    """
    identity = check_identity(identity)
    limit = check_limit(limit)
    poll_interval = _positive("poll_interval", poll_interval)
    idle_interval = _positive("idle_interval", idle_interval)
    if not isinstance(conn, psycopg.AsyncConnection) or not conn.autocommit:
        raise InvalidValue("conn", conn, "a psycopg AsyncConnection in autocommit mode")
    if cursor is not None:
        ChangePosition.decode(cursor)  # refuse a bad cursor before subscribing
    channel = await arun_on_connection(conn, schema, channel_plan(schema, identity))
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    try:
        # Subscribed first, then the position: a change committed in between is in the feed.
        if cursor is None:
            cursor = await arun_on_connection(conn, schema, change_cursor_plan())
        yield InboxListener(
            conn,
            schema=schema,
            identity=identity,
            cursor=cursor,
            poll_interval=poll_interval,
            idle_interval=idle_interval,
            limit=limit,
        )
    finally:
        # Shielded, so a cancelled listener still unsubscribes; a broken connection has nothing
        # left to unsubscribe, and its error must not hide the one that ended the listener.
        with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
