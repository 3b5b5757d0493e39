"""Reading an inbox: keyset pages newest first, filters, counts, scoping, and bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chimeway import inbox
from chimeway.errors import InvalidCursor, InvalidValue
from chimeway.inbox import InboxItem, InboxPage

from .conftest import AddNotifications, InboxApi

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def all_pages(inbox_api: InboxApi, identity: str, **options: Any) -> list[InboxPage]:
    pages = [await inbox_api.list_for_recipient(identity, **options)]
    while pages[-1].next_cursor is not None:
        pages.append(await inbox_api.list_for_recipient(identity, before=pages[-1].next_cursor, **options))
    return pages


def newest_first(*groups: tuple[datetime, list[uuid.UUID]]) -> list[uuid.UUID]:
    # PostgreSQL orders uuids by their bytes, as Python orders UUID objects.
    rows = [(at, notification_id) for at, ids in groups for notification_id in ids]
    return [notification_id for _, notification_id in sorted(rows, reverse=True)]


def ids(pages: list[InboxPage]) -> list[uuid.UUID]:
    return [item.id for page in pages for item in page.items]


async def test_pages_run_newest_first_across_ties_on_inserted_at_without_gaps_or_repeats(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    older = add_notifications(count=2, inserted_at=T0)
    tied = add_notifications(count=7, inserted_at=T0 + timedelta(minutes=1))
    newer = add_notifications(count=3, inserted_at=T0 + timedelta(minutes=2))

    pages = await all_pages(inbox_api, "user:42", limit=5)

    assert [len(page.items) for page in pages] == [5, 5, 2]
    expected = newest_first(
        (T0, older), (T0 + timedelta(minutes=1), tied), (T0 + timedelta(minutes=2), newer)
    )
    assert ids(pages) == expected
    # the seven ties are split across the first two pages, and the cursor between them holds
    assert set(ids(pages)[3:10]) == set(tied)


async def test_a_page_that_ends_exactly_at_the_last_notification_says_there_is_no_next(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    add_notifications(count=10, inserted_at=T0)

    pages = await all_pages(inbox_api, "user:42", limit=5)

    assert [len(page.items) for page in pages] == [5, 5]
    assert pages[-1].next_cursor is None


async def test_a_notification_arriving_between_pages_does_not_shift_the_next_page(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    first = add_notifications(count=4, inserted_at=T0)
    page = await inbox_api.list_for_recipient("user:42", limit=2)
    add_notifications(count=1, inserted_at=T0 + timedelta(hours=1))

    following = await inbox_api.list_for_recipient("user:42", limit=2, before=page.next_cursor)

    assert [item.id for item in page.items + following.items] == newest_first((T0, first))


async def test_an_item_carries_the_notification_and_its_event(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    (notification_id,) = add_notifications(category="comments", inserted_at=T0, seen=True)

    (item,) = (await inbox_api.list_for_recipient("user:42")).items

    assert isinstance(item, InboxItem)
    assert (item.id, item.notification_key, item.category, item.content) == (
        notification_id,
        "comment_posted",
        "comments",
        {"n": 0},
    )
    assert item.seen
    assert not item.read
    assert not item.archived
    assert item.inserted_at == T0
    assert item.seen_at == T0
    with pytest.raises(AttributeError):
        item.read_at = T0  # type: ignore[misc]


async def test_archived_notifications_are_left_out_unless_asked_for_and_then_merged_in_order(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    live = add_notifications(count=3, inserted_at=T0)
    archived = add_notifications(count=3, inserted_at=T0 + timedelta(minutes=1), archived=True)
    later = add_notifications(count=1, inserted_at=T0 + timedelta(minutes=2))

    default = await all_pages(inbox_api, "user:42", limit=2)
    everything = await all_pages(inbox_api, "user:42", include_archived=True, limit=2)

    assert ids(default) == newest_first((T0, live), (T0 + timedelta(minutes=2), later))
    assert ids(everything) == newest_first(
        (T0, live), (T0 + timedelta(minutes=1), archived), (T0 + timedelta(minutes=2), later)
    )


async def test_unread_only_and_category_filter_and_combine_across_pages(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    unread_comments = add_notifications(count=3, category="comments", inserted_at=T0)
    add_notifications(count=2, category="comments", inserted_at=T0, read=True)
    add_notifications(count=2, category="billing", inserted_at=T0)
    archived_unread = add_notifications(count=2, category="comments", inserted_at=T0, archived=True)
    add_notifications(count=1, inserted_at=T0)

    unread = await all_pages(inbox_api, "user:42", unread_only=True, limit=2)
    comments = await all_pages(inbox_api, "user:42", category="comments", limit=2)
    combined = await all_pages(
        inbox_api, "user:42", unread_only=True, category="comments", include_archived=True, limit=2
    )

    assert len(ids(unread)) == 6
    assert all(not item.read for page in unread for item in page.items)
    assert len(ids(comments)) == 5
    assert {item.category for page in comments for item in page.items} == {"comments"}
    assert ids(combined) == newest_first((T0, unread_comments + archived_unread))
    assert await inbox_api.list_for_recipient("user:42", category="nothing-here") == InboxPage((), None)


async def test_a_recipient_sees_only_their_own_notifications_and_counts(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    mine = add_notifications("user:1", count=2, inserted_at=T0)
    add_notifications("user:2", count=5, inserted_at=T0)
    add_notifications("user:10", count=5, inserted_at=T0)

    page = await inbox_api.list_for_recipient("user:1", include_archived=True)

    assert {item.id for item in page.items} == set(mine)
    assert await inbox_api.counts("user:1") == inbox.InboxCounts(unseen=2, unread=2)
    assert await inbox_api.list_for_recipient("user:3") == InboxPage((), None)


async def test_counts_leave_out_archived_and_count_a_read_notification_as_not_unseen(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    add_notifications(count=4)  # new: unseen and unread
    add_notifications(count=3, seen=True)  # seen, still unread
    add_notifications(count=2, read=True)  # read without being marked seen
    add_notifications(count=5, archived=True)  # archived unread
    add_notifications(count=1, seen=True, read=True)

    counts = await inbox_api.counts("user:42")

    assert counts == inbox.InboxCounts(unseen=4, unread=7)


async def test_an_oversized_limit_is_clamped_to_the_maximum(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    add_notifications(count=inbox.MAX_PAGE_SIZE + 3, inserted_at=T0)

    page = await inbox_api.list_for_recipient("user:42", limit=10_000)
    rest = await inbox_api.list_for_recipient("user:42", limit=10_000, before=page.next_cursor)

    assert len(page.items) == inbox.MAX_PAGE_SIZE
    assert (len(rest.items), rest.next_cursor) == (3, None)


@pytest.mark.parametrize("identity", ["", "   ", None, 42])
async def test_a_blank_or_non_string_identity_is_refused(inbox_api: InboxApi, identity: Any) -> None:
    with pytest.raises(InvalidValue, match="identity must be a non-blank string"):
        await inbox_api.list_for_recipient(identity)
    with pytest.raises(InvalidValue, match="identity must be a non-blank string"):
        await inbox_api.counts(identity)


@pytest.mark.parametrize("limit", [0, -1, True, "50", 2.5])
async def test_a_limit_that_is_not_a_positive_integer_is_refused(inbox_api: InboxApi, limit: Any) -> None:
    with pytest.raises(InvalidValue, match=r"limit must be a positive integer \(at most 200"):
        await inbox_api.list_for_recipient("user:42", limit=limit)


@pytest.mark.parametrize("category", ["", "  ", 7])
async def test_a_blank_category_is_refused(inbox_api: InboxApi, category: Any) -> None:
    with pytest.raises(InvalidValue, match="category must be None or a non-blank string"):
        await inbox_api.list_for_recipient("user:42", category=category)


async def test_a_malformed_or_foreign_cursor_is_refused_by_name(
    inbox_api: InboxApi, add_notifications: AddNotifications
) -> None:
    add_notifications(count=3)
    good = (await inbox_api.list_for_recipient("user:42", limit=1)).next_cursor
    assert good is not None
    change_cursor = await inbox_api.changes_cursor()
    other_tag = "Z" + good[1:]
    for bad in ["garbage", "", good + "A", good[:-1], other_tag, change_cursor, "é" * 10, 12345, "x" * 500]:
        with pytest.raises(InvalidCursor, match="cursor must be list_for_recipient's next_cursor") as caught:
            await inbox_api.list_for_recipient("user:42", before=bad)
        assert len(str(caught.value)) < 200
