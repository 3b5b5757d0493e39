"""Fixtures for the inbox: committed notifications with chosen state, and the API as sync or async.

``inbox_api`` runs every test twice, once through the sync functions on ``sa_session`` and once
through their async twins on ``sa_async_session``: ``await inbox_api.mark_read(identity, id)``
calls ``inbox.mark_read(sa_session, …)`` or ``await inbox.amark_read(sa_async_session, …)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from chimeway import inbox
from chimeway.inbox.values import ChangePosition
from chimeway.models import Event, Notification
from tests.helpers import wait_until

from ..conftest import SessionFactory

#: How long a test waits for the feed to pass a change: on a server shared with other test runs,
#: their write transactions hold the feed back while they last.
SHARED_SERVER_PATIENCE = 30.0


class AddNotifications(Protocol):
    def __call__(
        self,
        recipient: str = ...,
        count: int = ...,
        *,
        category: str | None = ...,
        inserted_at: datetime | None = ...,
        seen: bool = ...,
        read: bool = ...,
        archived: bool = ...,
    ) -> list[uuid.UUID]: ...


@pytest.fixture
def add_notifications(new_session: SessionFactory) -> AddNotifications:
    """Commit ``count`` notifications for ``recipient`` in one transaction (each with its own
    event); returns their ids in insertion order. Without ``inserted_at`` they share the
    transaction's now(), i.e. they tie on inserted_at."""

    def add(
        recipient: str = "user:42",
        count: int = 1,
        *,
        category: str | None = None,
        inserted_at: datetime | None = None,
        seen: bool = False,
        read: bool = False,
        archived: bool = False,
    ) -> list[uuid.UUID]:
        with new_session() as session, session.begin():
            event_ids = session.scalars(
                insert(Event).returning(Event.id, sort_by_parameter_order=True),
                [
                    {
                        "notification_key": "comment_posted",
                        "notification_version": 1,
                        "idempotency_key": f"test-{uuid.uuid4()}",
                    }
                    for _ in range(count)
                ],
            ).all()
            state: dict[str, Any] = {}
            for flag, column in ((seen, "seen_at"), (read, "read_at"), (archived, "archived_at")):
                if flag:
                    state[column] = inserted_at or datetime.now().astimezone()
            if inserted_at is not None:
                state["inserted_at"] = inserted_at
            return list(
                session.scalars(
                    insert(Notification).returning(Notification.id, sort_by_parameter_order=True),
                    [
                        {
                            "event_id": event_id,
                            "recipient_identity": recipient,
                            "recipient_type": "user",
                            "metadata_": {"n": n},
                            "category": category,
                            **state,
                        }
                        for n, event_id in enumerate(event_ids)
                    ],
                ).all()
            )

    return add


@pytest.fixture
def settled_cursor(new_session: SessionFactory) -> Callable[[], str]:
    """A change cursor past every change committed so far, for tests that expect exact changes.

    The feed's horizon is the database's oldest open write transaction: while someone else's
    (another test run's, say) is open, a cursor taken now would also cover changes committed
    just before it (the feed gives changes at least once). This waits until every transaction
    older than now has ended."""

    def take() -> str:
        with new_session() as session:
            now = int(session.scalar(text("SELECT pg_current_xact_id()::text")))
            session.commit()

        def past_now() -> str | None:
            with new_session() as session:
                cursor = inbox.changes_cursor(session)
            return cursor if ChangePosition.decode(cursor).xid > now else None

        cursor = wait_until(
            past_now, timeout=SHARED_SERVER_PATIENCE, message="a write transaction stayed open"
        )
        assert cursor is not None
        return cursor

    return take


class InboxApi:
    """The functions of :mod:`chimeway.inbox` bound to a session, all awaitable."""

    def __init__(self, kind: str, session: Session, async_session: AsyncSession) -> None:
        self.kind = kind
        self.session = session
        self.async_session = async_session

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if self.kind == "sync":
            function = getattr(inbox, name)

            async def call_sync(*args: Any, **kwargs: Any) -> Any:
                return function(self.session, *args, **kwargs)

            return call_sync
        twin = getattr(inbox, f"a{name}")

        async def call_async(*args: Any, **kwargs: Any) -> Any:
            return await twin(self.async_session, *args, **kwargs)

        return call_async

    async def commit(self) -> None:
        if self.kind == "sync":
            self.session.commit()
        else:
            await self.async_session.commit()


@pytest.fixture(params=["sync", "async"])
def inbox_api(
    request: pytest.FixtureRequest, sa_session: Session, sa_async_session: AsyncSession
) -> InboxApi:
    return InboxApi(request.param, sa_session, sa_async_session)
