"""The change feed: changes_since by cursor, never skipping a late commit, and NOTIFY per channel."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select, text, update

from chimeway import inbox
from chimeway.errors import InvalidCursor
from chimeway.inbox import InboxChanges
from chimeway.inbox.values import ChangePosition
from chimeway.models import Notification
from chimeway.store import queries_for
from tests.helpers import await_until, wait_until

from ..conftest import SessionFactory
from .conftest import SHARED_SERVER_PATIENCE, AddNotifications, InboxApi

SENTINEL = f"inbox_tests_{uuid.uuid4().hex}"


def changed_ids(changes: InboxChanges) -> list[uuid.UUID]:
    return [item.id for item in changes.items]


def follow(
    new_session: SessionFactory,
    identity: str,
    cursor: str,
    until: Callable[[list[uuid.UUID]], bool],
) -> tuple[list[InboxChanges], str]:
    """Read the feed from ``cursor`` (two changes a call, as a client would, asking again while a
    change is held back) until the ids read so far satisfy ``until``; the batches and the cursor.

    The horizon is the database's: a write transaction of anyone else's still open in it holds
    changes back for as long as it runs, so a test waits for what it expects."""
    batches: list[InboxChanges] = []

    def read() -> bool:
        nonlocal cursor
        with new_session() as session:
            while True:
                batch = inbox.changes_since(session, identity, cursor, limit=2)
                session.commit()
                batches.append(batch)
                cursor = batch.cursor
                if not batch.more:
                    break
        return until(flat(batches))

    wait_until(
        read,
        timeout=SHARED_SERVER_PATIENCE,
        message=f"the feed never gave what was expected: {flat(batches)}",
    )
    return batches, cursor


def flat(batches: list[InboxChanges]) -> list[uuid.UUID]:
    return [item.id for batch in batches for item in batch.items]


def channel(dsn: str, schema: str, identity: str, *, for_schema: str | None = None) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        params = {"schema": for_schema or schema, "identity": identity}
        row = conn.execute(queries_for(schema).inbox_channel, params)
        return str(row.fetchone()[0])  # type: ignore[index]


@pytest.fixture
def listener(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(SENTINEL)))
        yield conn


def notifications_until_sentinel(listener: psycopg.Connection[Any], dsn: str) -> list[str]:
    """The channels notified so far, in order: a sentinel NOTIFY committed after everything else
    arrives after all of it (PostgreSQL delivers in commit order), so no waiting on absence."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, '')", (SENTINEL,))
    received: list[str] = []
    for notification in listener.notifies(timeout=10):
        if notification.channel == SENTINEL:
            return received
        received.append(notification.channel)
    raise AssertionError(f"the sentinel NOTIFY never arrived; received {received}")


@pytest.mark.anyio
async def test_changes_since_returns_each_new_or_changed_notification_once_as_it_is_now(
    inbox_api: InboxApi, add_notifications: AddNotifications, settled_cursor: Callable[[], str]
) -> None:
    cursor = settled_cursor()
    first, second = add_notifications(count=2)
    add_notifications("user:7", count=3)
    await inbox_api.mark_read("user:42", first)
    await inbox_api.mark_seen("user:42", first)
    await inbox_api.commit()

    batches: list[InboxChanges] = []

    async def read_both() -> bool:
        # (in more than one read if someone's open transaction holds a change back meanwhile)
        batches.append(await inbox_api.changes_since("user:42", batches[-1].cursor if batches else cursor))
        await inbox_api.commit()
        return len(flat(batches)) >= 2

    await await_until(read_both, timeout=SHARED_SERVER_PATIENCE)
    changes = batches[-1]
    after = await inbox_api.changes_since("user:42", changes.cursor)

    # `second` last changed when created; `first` since (read, then seen), so it comes last
    assert flat(batches) == [second, first]
    assert changes.items[-1].read
    assert changes.items[-1].seen
    assert (changes.more, changes.pending) == (False, False)
    assert (after.items, after.more) == ((), False)


def test_a_limit_splits_the_changes_and_the_cursor_goes_on_without_gaps(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    cursor = settled_cursor()
    created = [add_notifications()[0] for _ in range(5)]

    batches, _ = follow(new_session, "user:42", cursor, until=lambda ids: len(ids) >= 5)

    assert flat(batches) == created
    assert all(len(batch.items) == 2 for batch in batches if batch.more)
    assert all(len(batch.items) <= 2 for batch in batches)
    assert any(batch.more for batch in batches)


def test_a_change_that_commits_after_a_newer_one_is_never_skipped(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    # The classic: numbered in order of writing, the older transaction's change (lower number)
    # commits after the newer one has been read past. Here it is held back, then delivered.
    early_id, late_id = add_notifications(count=2)
    cursor = settled_cursor()
    older, newer = new_session(), new_session()
    older.begin()
    assert inbox.mark_read(older, "user:42", early_id)  # the older transaction writes first
    assert inbox.mark_read(newer, "user:42", late_id)  # and commits (no transaction was open)

    with new_session() as reader:
        held = inbox.changes_since(reader, "user:42", cursor)
    assert held.items == ()
    assert held.pending  # the newer change is committed but held back
    cursor = held.cursor

    older.commit()
    batches, cursor = follow(new_session, "user:42", cursor, until=lambda ids: len(ids) >= 2)

    assert sorted(flat(batches)) == sorted([early_id, late_id])
    assert all(item.read for batch in batches for item in batch.items)
    with new_session() as reader:
        assert inbox.changes_since(reader, "user:42", cursor).items == ()


def test_a_newer_transaction_still_running_holds_back_nothing_older(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    early_id, late_id = add_notifications(count=2)
    cursor = settled_cursor()
    older, newer = new_session(), new_session()
    older.begin()
    newer.begin()
    older.execute(text("SELECT pg_current_xact_id()"))  # the older transaction takes its id first
    assert inbox.mark_read(newer, "user:42", late_id)  # younger transaction, still open
    assert inbox.mark_read(older, "user:42", early_id)
    older.commit()

    batches, cursor = follow(new_session, "user:42", cursor, until=lambda ids: early_id in ids)
    assert flat(batches) == [early_id]  # while the younger one is still open

    newer.commit()
    batches, cursor = follow(new_session, "user:42", cursor, until=lambda ids: late_id in ids)
    assert flat(batches) == [late_id]


def changed_xid(new_session: SessionFactory, notification_id: uuid.UUID) -> int:
    with new_session() as session:
        return session.execute(
            select(Notification.changed_xid).where(Notification.id == notification_id)
        ).scalar_one()


def test_a_change_made_with_plain_sql_moves_the_row_in_the_feed_and_a_change_to_nothing_does_not(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    read_id, other_id = add_notifications(count=2, read=True)
    other_before = changed_xid(new_session, other_id)
    cursor = settled_cursor()

    with new_session() as session, session.begin():
        xid = int(session.scalar(text("SELECT pg_current_xact_id()::text")))
        session.execute(update(Notification).where(Notification.id == read_id).values(read_at=None))
        session.execute(update(Notification).where(Notification.id == other_id).values(recipient_type="user"))
    with new_session() as session:
        assert inbox.mark_read(session, "user:42", other_id) is False  # already read
        session.commit()

    assert changed_xid(new_session, read_id) == xid
    assert changed_xid(new_session, other_id) == other_before
    batches, _ = follow(new_session, "user:42", cursor, until=lambda ids: read_id in ids)
    assert flat(batches) == [read_id]
    assert not batches[-1].items[0].read


def test_a_change_cursor_taken_before_a_page_misses_nothing_committed_after_it(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    add_notifications(count=2)
    cursor = settled_cursor()  # the client's cursor, taken before its page
    (arrived,) = add_notifications()  # between the cursor and the page
    with new_session() as client:
        page = inbox.list_for_recipient(client, "user:42")
    (later,) = add_notifications()

    batches, _ = follow(new_session, "user:42", cursor, until=lambda ids: later in ids)

    assert arrived in {item.id for item in page.items}
    # the first comes although the page had it (at least once); the second is not lost
    assert flat(batches) == [arrived, later]


@pytest.mark.anyio
async def test_a_malformed_or_foreign_change_cursor_is_refused(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    add_notifications(count=2)
    page_cursor = (await inbox_api.list_for_recipient("user:42", limit=1)).next_cursor
    good = await inbox_api.changes_cursor()
    for bad in [page_cursor, "", "nope", good + "A", None]:
        with pytest.raises(InvalidCursor, match="cursor must be a change cursor"):
            await inbox_api.changes_since("user:42", bad)


def test_inserting_and_changing_notify_each_recipients_channel_once_per_statement(
    dsn: str,
    schema: str,
    listener: psycopg.Connection[Any],
    add_notifications: AddNotifications,
    new_session: SessionFactory,
) -> None:
    mine = channel(dsn, schema, "user:42")
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(mine)))

    created = add_notifications(count=3)  # one statement, three rows
    assert notifications_until_sentinel(listener, dsn) == [mine]

    with new_session() as session:
        assert inbox.mark_all_read(session, "user:42") == 3
    assert notifications_until_sentinel(listener, dsn) == [mine]

    with new_session() as session:
        assert inbox.mark_read(session, "user:42", created[0]) is False  # nothing to change
        assert inbox.mark_all_read(session, "user:42") == 0
    assert notifications_until_sentinel(listener, dsn) == []


def test_one_insert_for_a_thousand_recipients_sends_one_notify_per_channel(
    dsn: str, schema: str, listener: psycopg.Connection[Any], new_session: SessionFactory
) -> None:
    identities = [f"user:{n}" for n in range(1000)]
    channels = {channel(dsn, schema, identity) for identity in identities}
    for name in channels:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn, conn.transaction():
        notifications = sql.Identifier(schema, "chimeway_notifications")
        events = sql.Identifier(schema, "chimeway_events")
        conn.execute(
            sql.SQL(
                "WITH event AS (INSERT INTO {} (notification_key, notification_version, idempotency_key)"
                " VALUES ('bulk', 1, 'bulk-1') RETURNING id)"
                " INSERT INTO {} (event_id, recipient_identity, recipient_type)"
                " SELECT event.id, identity, 'user' FROM event, unnest(%s::text[]) AS identity"
            ).format(events, notifications),
            (identities,),
        )

    received = notifications_until_sentinel(listener, dsn)

    assert sorted(received) == sorted(channels)  # each channel once, however many recipients share it
    assert len(channels) < len(identities)


def test_a_channel_names_no_identity_and_fits_postgres_limit(dsn: str, schema: str) -> None:
    identity = "user:alice@example.com"
    name = channel(dsn, schema, identity)

    assert re.fullmatch(r"chimeway_inbox_[0-9a-f]{1,8}_[0-9a-f]{1,3}", name)
    assert len(name.encode()) <= 63
    assert "alice" not in name
    assert name == channel(dsn, schema, identity)
    other_schema = channel(dsn, schema, identity, for_schema="another_schema")
    assert other_schema != name
    assert other_schema.rsplit("_", 1)[1] == name.rsplit("_", 1)[1]


def test_a_write_transaction_open_in_another_database_holds_nothing_back(
    dsn: str,
    add_notifications: AddNotifications,
    new_session: SessionFactory,
    settled_cursor: Callable[[], str],
) -> None:
    cursor = settled_cursor()
    elsewhere = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(elsewhere) as other_database:
        (other_xid,) = other_database.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()  # type: ignore[misc]
        (created,) = add_notifications()  # a younger transaction here, committed

        # delivered while the older transaction over there is still open
        batches, cursor = follow(new_session, "user:42", cursor, until=lambda ids: created in ids)
        assert ChangePosition.decode(cursor).xid > other_xid
        other_database.rollback()

    assert flat(batches) == [created]


def test_a_sessions_own_uncommitted_changes_are_held_back_until_it_commits(
    add_notifications: AddNotifications, new_session: SessionFactory, settled_cursor: Callable[[], str]
) -> None:
    (notification_id,) = add_notifications()
    cursor = settled_cursor()
    with new_session() as session:
        session.begin()
        assert inbox.mark_read(session, "user:42", notification_id)

        mine = inbox.changes_since(session, "user:42", cursor)
        assert mine.items == ()
        assert mine.pending
        session.commit()

    batches, _ = follow(new_session, "user:42", cursor, until=lambda ids: notification_id in ids)
    assert flat(batches) == [notification_id]


def test_the_cursor_never_moves_back_behind_a_horizon_it_has_passed(sa_session: Any) -> None:
    now = ChangePosition.decode(inbox.changes_cursor(sa_session)).xid
    ahead = ChangePosition(now + 1000).encode()

    changes = inbox.changes_since(sa_session, "user:42", ahead)

    assert ChangePosition.decode(changes.cursor) == ChangePosition(now + 1000)
    assert not changes.pending
