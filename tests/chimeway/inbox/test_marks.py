"""Changing an inbox: one notification or all of them, idempotent, always scoped to the recipient."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from chimeway import inbox
from chimeway.errors import InvalidValue, NotificationNotFound
from chimeway.models import Notification

from ..conftest import SessionFactory
from .conftest import AddNotifications, InboxApi

pytestmark = pytest.mark.anyio

STATE = ("seen_at", "read_at", "archived_at", "updated_at")


def state_of(new_session: SessionFactory, notification_id: uuid.UUID) -> tuple[datetime | None, ...]:
    with new_session() as session:
        row = session.execute(
            select(*(getattr(Notification, column) for column in STATE)).where(
                Notification.id == notification_id
            )
        ).one()
        return tuple(row)


async def test_marking_read_twice_keeps_the_first_read_at_and_reports_only_the_first(
    inbox_api: InboxApi, add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    (notification_id,) = add_notifications()

    first = await inbox_api.mark_read("user:42", notification_id)
    await inbox_api.commit()
    read_at = state_of(new_session, notification_id)[1]
    again = await inbox_api.mark_read("user:42", str(notification_id))
    await inbox_api.commit()

    assert (first, again) == (True, False)
    assert read_at is not None
    assert state_of(new_session, notification_id)[1] == read_at
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=0, unread=0)


@pytest.mark.parametrize(
    ("mark", "undo", "column"),
    [
        ("mark_seen", None, "seen_at"),
        ("mark_read", "mark_unread", "read_at"),
        ("archive", "unarchive", "archived_at"),
    ],
)
async def test_each_mark_sets_its_timestamp_once_and_its_undo_clears_it_once(
    inbox_api: InboxApi,
    add_notifications: AddNotifications,
    new_session: SessionFactory,
    mark: str,
    undo: str | None,
    column: str,
) -> None:
    (notification_id,) = add_notifications()
    index = STATE.index(column)

    assert await getattr(inbox_api, mark)("user:42", notification_id) is True
    assert await getattr(inbox_api, mark)("user:42", notification_id) is False
    await inbox_api.commit()
    assert state_of(new_session, notification_id)[index] is not None
    others = [value for i, value in enumerate(state_of(new_session, notification_id)[:3]) if i != index]
    assert others == [None, None]
    if undo is not None:
        assert await getattr(inbox_api, undo)("user:42", notification_id) is True
        assert await getattr(inbox_api, undo)("user:42", notification_id) is False
        await inbox_api.commit()
        assert state_of(new_session, notification_id)[index] is None


async def test_archiving_takes_a_notification_out_of_the_inbox_and_its_counts(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    keep, gone = add_notifications(count=2)

    await inbox_api.archive("user:42", gone)

    assert [item.id for item in (await inbox_api.list_for_recipient("user:42")).items] == [keep]
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=1, unread=1)
    await inbox_api.unarchive("user:42", gone)
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=2, unread=2)


@pytest.mark.parametrize("mark", ["mark_seen", "mark_read", "mark_unread", "archive", "unarchive"])
async def test_another_recipients_notification_is_not_found_and_left_unchanged(
    inbox_api: InboxApi,
    add_notifications: AddNotifications,
    new_session: SessionFactory,
    mark: str,
) -> None:
    # read and archived, so that every mark (or its undo) would change it
    (theirs,) = add_notifications("user:7", read=True, archived=True)
    before = state_of(new_session, theirs)

    with pytest.raises(NotificationNotFound, match=str(theirs)):
        await getattr(inbox_api, mark)("user:42", theirs)
    await inbox_api.commit()

    assert state_of(new_session, theirs) == before


async def test_an_unknown_or_malformed_notification_id_is_refused(inbox_api: InboxApi) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotificationNotFound, match=f"no notification with id '{missing}'"):
        await inbox_api.mark_read("user:42", missing)
    for bad in ["not-a-uuid", 17, None]:
        with pytest.raises(InvalidValue, match="notification_id must be a UUID"):
            await inbox_api.mark_read("user:42", bad)
    with pytest.raises(InvalidValue, match="identity must be a non-blank string"):
        await inbox_api.mark_read(" ", missing)


async def test_mark_all_read_marks_the_unread_inbox_only_and_once(
    inbox_api: InboxApi, add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    unread = add_notifications(count=3)
    (already_read,) = add_notifications(read=True)
    (archived,) = add_notifications(archived=True)
    (someone_elses,) = add_notifications("user:7")
    read_before = state_of(new_session, already_read)[1]

    changed = await inbox_api.mark_all_read("user:42")
    again = await inbox_api.mark_all_read("user:42")
    await inbox_api.commit()

    assert (changed, again) == (3, 0)
    assert all(state_of(new_session, n)[1] is not None for n in unread)
    assert state_of(new_session, already_read)[1] == read_before
    assert state_of(new_session, archived)[1] is None
    assert state_of(new_session, someone_elses)[1] is None
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=0, unread=0)
    assert await inbox_api.counts("user:7") == inbox.InboxCounts(unseen=1, unread=1)


async def test_mark_all_seen_marks_what_counts_as_unseen_and_leaves_read_alone(
    inbox_api: InboxApi, add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    unseen = add_notifications(count=2)
    (read_unseen,) = add_notifications(read=True)

    assert await inbox_api.mark_all_seen("user:42") == 2
    assert await inbox_api.mark_all_seen("user:42") == 0
    await inbox_api.commit()

    assert all(state_of(new_session, n)[0] is not None for n in unseen)
    assert state_of(new_session, read_unseen)[0] is None
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=0, unread=2)


async def test_a_mark_commits_on_its_own_when_no_transaction_is_open(
    inbox_api: InboxApi, add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    (notification_id,) = add_notifications()

    await inbox_api.mark_read("user:42", notification_id)

    # seen from another connection, with no commit by the caller
    assert state_of(new_session, notification_id)[1] is not None


async def test_a_mark_joins_the_callers_open_transaction_and_rolls_back_with_it(
    inbox_api: InboxApi, add_notifications: AddNotifications, new_session: SessionFactory
) -> None:
    (notification_id,) = add_notifications()
    await inbox_api.counts("user:42")  # any read opens the caller's transaction

    assert await inbox_api.mark_read("user:42", notification_id) is True
    assert state_of(new_session, notification_id)[1] is None  # not committed yet
    await rollback(inbox_api)

    assert state_of(new_session, notification_id)[1] is None
    assert await inbox_api.counts("user:42") == inbox.InboxCounts(unseen=1, unread=1)


async def rollback(inbox_api: InboxApi) -> Any:
    if inbox_api.kind == "sync":
        return inbox_api.session.rollback()
    return await inbox_api.async_session.rollback()
