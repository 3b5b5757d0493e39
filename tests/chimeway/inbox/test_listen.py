"""inbox.listen: real LISTEN/NOTIFY on a psycopg connection, and the poll for held-back changes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text

from chimeway import inbox
from chimeway.errors import InvalidCursor, InvalidValue
from chimeway.inbox import InboxChanges, InboxListener
from tests.helpers import await_until

from ..conftest import SessionFactory
from .conftest import SHARED_SERVER_PATIENCE, AddNotifications

pytestmark = pytest.mark.anyio

DEADLINE = SHARED_SERVER_PATIENCE


@pytest.fixture
async def listen_conn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        yield conn


async def next_batch(changes: InboxListener) -> InboxChanges:
    with anyio.fail_after(DEADLINE):
        return await anext(changes)


def ids(batch: InboxChanges) -> list[uuid.UUID]:
    return [item.id for item in batch.items]


async def channels_listened(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    cursor = await conn.execute("SELECT pg_listening_channels()")
    return [row[0] for row in await cursor.fetchall()]


async def test_a_listener_wakes_on_notify_for_a_new_notification_and_for_its_read(
    listen_conn: psycopg.AsyncConnection[Any],
    schema: str,
    add_notifications: AddNotifications,
    new_session: SessionFactory,
) -> None:
    # With a 60 s idle poll, only the NOTIFY can deliver within the deadline.
    async with inbox.listen(listen_conn, "user:42", schema=schema, idle_interval=60) as changes:
        (created,) = add_notifications()
        add_notifications("user:7")
        first = await next_batch(changes)
        with new_session() as session:
            inbox.mark_read(session, "user:42", created)
        second = await next_batch(changes)

    assert ids(first) == [created]
    assert not first.items[0].read
    assert ids(second) == [created]
    assert second.items[0].read
    assert changes.cursor == second.cursor
    assert await channels_listened(listen_conn) == []  # unsubscribed on the way out


async def test_a_change_held_back_behind_an_older_transaction_arrives_once_that_one_ends(
    listen_conn: psycopg.AsyncConnection[Any],
    schema: str,
    add_notifications: AddNotifications,
    new_session: SessionFactory,
) -> None:
    (notification_id,) = add_notifications()
    older = new_session()
    older.begin()
    older.execute(text("SELECT pg_current_xact_id()"))  # an older transaction, still open
    received: list[InboxChanges] = []

    async with inbox.listen(
        listen_conn, "user:42", schema=schema, poll_interval=0.05, idle_interval=60
    ) as changes:
        with new_session() as session:
            inbox.mark_read(session, "user:42", notification_id)  # commits, NOTIFYs, is held back

        async def follow() -> None:
            received.append(await next_batch(changes))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(follow)
            # Woken by the NOTIFY, the listener finds the change held back and keeps polling.
            await await_until(
                lambda: changes.pending,
                timeout=SHARED_SERVER_PATIENCE,
                message="the listener never saw the change held back",
            )
            assert received == []
            older.commit()  # an unrelated commit: no NOTIFY for user:42; the poll finds the change

    assert [ids(batch) for batch in received] == [[notification_id]]
    assert received[0].items[0].read


async def test_a_listener_resumes_from_a_cursor_without_repeating_what_it_gave(
    listen_conn: psycopg.AsyncConnection[Any],
    schema: str,
    add_notifications: AddNotifications,
) -> None:
    async with inbox.listen(listen_conn, "user:42", schema=schema) as changes:
        (first,) = add_notifications()
        assert ids(await next_batch(changes)) == [first]
        resume_at = changes.cursor
    (missed,) = add_notifications()  # while nobody listens

    async with inbox.listen(listen_conn, "user:42", schema=schema, cursor=resume_at) as changes:
        assert ids(await next_batch(changes)) == [missed]


async def test_listen_refuses_a_connection_in_a_transaction_mode_and_bad_arguments(
    dsn: str, listen_conn: psycopg.AsyncConnection[Any], schema: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as in_transactions:
        with pytest.raises(InvalidValue, match="conn must be a psycopg AsyncConnection in autocommit"):
            async with inbox.listen(in_transactions, "user:42", schema=schema):
                pass
    with pytest.raises(InvalidCursor, match="cursor must be a change cursor"):
        async with inbox.listen(listen_conn, "user:42", schema=schema, cursor="nope"):
            pass
    with pytest.raises(InvalidValue, match="poll_interval must be a positive number"):
        async with inbox.listen(listen_conn, "user:42", schema=schema, poll_interval=0):
            pass
    with pytest.raises(InvalidValue, match="identity must be a non-blank string"):
        async with inbox.listen(listen_conn, "", schema=schema):
            pass
    assert await channels_listened(listen_conn) == []


async def test_a_cancelled_listener_still_unsubscribes(
    listen_conn: psycopg.AsyncConnection[Any], schema: str
) -> None:
    with anyio.move_on_after(0.2) as scope:
        async with inbox.listen(listen_conn, "user:42", schema=schema, idle_interval=60) as changes:
            assert len(await channels_listened(listen_conn)) == 1
            await anext(changes)

    assert scope.cancelled_caught
    assert await channels_listened(listen_conn) == []
