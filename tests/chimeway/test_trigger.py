"""``trigger``: event, notifications, deliveries and jobs in one transaction; idempotency."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from chimeway import preferences
from chimeway.dispatch import DispatchWorker
from chimeway.models import Delivery, Event, Notification
from chimeway.notifier import Notifier, Recipient
from chimeway.trigger import PlanningFailed, TriggerError, trigger

from .conftest import SessionFactory


class CommentPosted(Notifier):
    notification_key = "comment_posted"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return [f"user:{u}" for u in params.get("users", [1])]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return params.get("channels", ["email"])

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"body": "hello", "token": "s3cret"}


class BrokenChannels(CommentPosted):
    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        raise RuntimeError("directory down")


def count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_trigger_plans_one_delivery_per_channel_and_enqueues_one_job_each(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        result = trigger(
            session,
            CommentPosted(),
            {"users": [1, 2], "channels": ["email", " sms ", "email"]},
            idempotency_key="k1",
            queue_schema=schema,
        )
        session.commit()
    assert not result.duplicate
    assert [n.recipient_identity for n in result.notifications] == ["user:1", "user:2"]
    assert sorted(d.channel for d in result.deliveries) == ["email", "email", "sms", "sms"]
    assert {d.status for d in result.deliveries} == {"pending"}
    with new_session(expire_on_commit=False) as session:
        jobs = pgqueue.all_jobs(session, schema=schema)
    assert len(jobs) == 4
    assert {j.worker for j in jobs} == {DispatchWorker.name}
    assert sorted(j.args["delivery_id"] for j in jobs) == sorted(str(i) for i in result.delivery_ids)


def test_a_repeated_idempotency_key_creates_nothing(new_session: SessionFactory, schema: str) -> None:
    with new_session(expire_on_commit=False) as session:
        first = trigger(session, CommentPosted(), {}, idempotency_key="same", queue_schema=schema)
        session.commit()
        second = trigger(session, CommentPosted(), {}, idempotency_key="same", queue_schema=schema)
        session.commit()
        assert second.duplicate
        assert second.event.id == first.event.id
        assert (count(session, Event), count(session, Notification), count(session, Delivery)) == (1, 1, 1)
        assert len(pgqueue.all_jobs(session, schema=schema)) == 1


def test_ten_concurrent_triggers_with_one_key_create_one_event(
    new_session: SessionFactory, schema: str
) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(10)

    def fire() -> None:
        with new_session(expire_on_commit=False) as session:
            session.execute(select(1))
            barrier.wait(5)
            results.append(
                trigger(session, CommentPosted(), {}, idempotency_key="race", queue_schema=schema).duplicate
            )
            session.commit()

    threads = [threading.Thread(target=fire) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] + [True] * 9
    with new_session(expire_on_commit=False) as session:
        assert (count(session, Event), count(session, Notification)) == (1, 1)


def test_a_rolled_back_trigger_leaves_no_rows_and_no_jobs(new_session: SessionFactory, schema: str) -> None:
    with new_session(expire_on_commit=False) as session:
        trigger(session, CommentPosted(), {}, idempotency_key="gone", queue_schema=schema)
        session.rollback()
        assert count(session, Delivery) == 0
        assert pgqueue.all_jobs(session, schema=schema) == []


@pytest.mark.parametrize(
    ("preference", "reason"),
    [("channel", "channel_disabled"), ("category", "category_disabled")],
)
def test_disabled_preferences_suppress_at_planning_without_a_job(
    new_session: SessionFactory, schema: str, preference: str, reason: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        if preference == "channel":
            preferences.upsert_channel_preference(session, "user:1", "comment_posted", "email", enabled=False)
        else:
            preferences.upsert_category_preference(session, "user:1", "social", enabled=False)
        session.commit()
        result = trigger(
            session, CommentPosted(), {"category": "social"}, idempotency_key="p", queue_schema=schema
        )
        session.commit()
        (delivery,) = result.deliveries
        assert (delivery.status, delivery.suppression_reason) == ("suppressed", reason)
        assert delivery.metadata_["policy_checkpoint"] == "planning"
        assert pgqueue.all_jobs(session, schema=schema) == []


def test_a_notifier_that_fails_while_planning_raises_planning_failed(
    new_session: SessionFactory, schema: str
) -> None:
    with (
        new_session(expire_on_commit=False) as session,
        pytest.raises(PlanningFailed, match="channels: RuntimeError: directory down"),
    ):
        trigger(session, BrokenChannels(), {}, idempotency_key="x", queue_schema=schema)


def test_secrets_never_reach_the_event_or_the_notification(new_session: SessionFactory, schema: str) -> None:
    with new_session(expire_on_commit=False) as session:
        result = trigger(
            session,
            CommentPosted(),
            {"password": "p", "Token": "t", "secret": "s", "ok": 1},
            idempotency_key="s",
            queue_schema=schema,
        )
        session.commit()
        assert result.event.payload == {"ok": 1}
        assert "token" not in result.notifications[0].metadata_


@pytest.mark.parametrize("key", ["", "   ", None, 7])
def test_the_idempotency_key_is_required(new_session: SessionFactory, key: Any) -> None:
    with new_session(expire_on_commit=False) as session, pytest.raises(TriggerError, match="idempotency_key"):
        trigger(session, CommentPosted(), {}, idempotency_key=key)


def test_params_must_be_json(new_session: SessionFactory) -> None:
    with (
        new_session(expire_on_commit=False) as session,
        pytest.raises(TriggerError, match="params must contain only JSON"),
    ):
        trigger(session, CommentPosted(), {"when": object()}, idempotency_key="j")


@pytest.mark.anyio
async def test_trigger_and_enqueue_through_async_session_run_sync(
    sa_async_session: AsyncSession, schema: str
) -> None:
    result = await sa_async_session.run_sync(
        lambda s: trigger(s, CommentPosted(), {}, idempotency_key="async", queue_schema=schema)
    )
    await sa_async_session.commit()
    assert len(result.jobs) == 1
