"""``trigger``: event, notifications, deliveries and jobs in one transaction; idempotency."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
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
from chimeway.trigger import PlanningFailed, TriggerError, TriggerResult, trigger

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


def notifications_of(session: Session, result: TriggerResult) -> list[Notification]:
    """The result's notifications as rows, in the result's order (it carries only their ids)."""
    rows = {
        n.id: n
        for n in session.scalars(select(Notification).where(Notification.id.in_(result.notification_ids)))
    }
    return [rows[i] for i in result.notification_ids]


def deliveries_of(session: Session, result: TriggerResult) -> list[Delivery]:
    """The result's deliveries as rows, in the result's order."""
    rows = {d.id: d for d in session.scalars(select(Delivery).where(Delivery.id.in_(result.delivery_ids)))}
    return [rows[i] for i in result.delivery_ids]


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
    with new_session(expire_on_commit=False) as session:
        assert [n.recipient_identity for n in notifications_of(session, result)] == ["user:1", "user:2"]
        planned = deliveries_of(session, result)
        assert sorted(d.channel for d in planned) == ["email", "email", "sms", "sms"]
        assert {d.status for d in planned} == {"pending"}
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
        (delivery,) = deliveries_of(session, result)
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
        assert "token" not in notifications_of(session, result)[0].metadata_


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
    assert len(result.job_ids) == 1


# -- bad input --------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


class Scripted(Notifier):
    """``count`` recipients (or the ones given); ``build`` returns ``content(i)`` for recipient i."""

    notification_key = "scripted"

    def __init__(
        self,
        *,
        count: int = 1,
        content: Callable[[int], Any] = lambda i: {"body": "hi"},
        recipients: Sequence[Any] | None = None,
        channels: Any = ("email",),
    ) -> None:
        self._recipients = [f"user:{i}" for i in range(count)] if recipients is None else recipients
        self._content = content
        self._channels = channels

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return self._recipients

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return self._channels  # type: ignore[no-any-return]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return self._content(int(recipient.identity.split(":")[1].strip("\x00")))  # type: ignore[no-any-return]


# the COPY line of recipient user:1500 of 2,000: recipients are written in identity order
LINE_OF_1500 = sorted(f"user:{i}" for i in range(2000)).index("user:1500") + 1


def assert_usable_and_empty(session: Session) -> None:
    """The caller's transaction still works and holds the event only; rolling back removes it."""
    assert (count(session, Event), count(session, Notification), count(session, Delivery)) == (1, 0, 0)
    session.rollback()
    assert count(session, Event) == 0


def test_params_nested_past_the_recursion_limit_raise_trigger_error_and_write_nothing(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session() as session:
        with pytest.raises(TriggerError, match="params is nested too deeply"):
            trigger(session, Scripted(), nested(5000), idempotency_key="deep", queue_schema=schema)
        assert count(session, Event) == 0


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (lambda i: nested(5000) if i == 1500 else {"ok": i}, "build\\(\\) is nested too deeply"),
        (lambda i: {"when": object()} if i == 1500 else {"ok": i}, "build\\(\\) must contain only JSON"),
        (lambda i: {"nul": "a\x00b"} if i == 1500 else {"ok": i}, "build\\(\\) must not contain NUL"),
        (
            lambda i: {"half": "\ud800"} if i == 1500 else {"ok": i},
            f"content the database refuses .* line {LINE_OF_1500}, column metadata",
        ),
    ],
    ids=["nested", "not-json", "nul", "lone-surrogate"],
)
def test_bad_content_for_one_recipient_of_thousands_raises_trigger_error_and_keeps_the_transaction(
    new_session: SessionFactory, schema: str, content: Any, error: str
) -> None:
    with new_session() as session:
        with pytest.raises(TriggerError, match=error):
            trigger(
                session, Scripted(count=2000, content=content), {}, idempotency_key="b", queue_schema=schema
            )
        assert_usable_and_empty(session)


def test_a_notifier_failing_mid_fan_out_raises_planning_failed_and_keeps_the_transaction(
    new_session: SessionFactory, schema: str
) -> None:
    def content(i: int) -> dict[str, Any]:
        if i == 1500:
            raise LookupError("template missing")
        return {"ok": i}

    with new_session() as session:
        with pytest.raises(PlanningFailed, match="build: LookupError: template missing") as raised:
            trigger(
                session, Scripted(count=2000, content=content), {}, idempotency_key="f", queue_schema=schema
            )
        assert raised.value.step == "build"
        assert_usable_and_empty(session)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"recipients": ["user:1\x00"]}, "identity must not contain NUL"),
        ({"recipients": [Recipient("user:1", None)]}, "type must be a string"),  # type: ignore[arg-type]
        ({"channels": ["e" * 129]}, "at most 128 characters"),
        ({"channels": ["sms\x00"]}, "a channel must not contain NUL"),
        ({"channels": None}, "channels must be a list of strings, got None"),
        ({"channels": [["email"]]}, "channels must be a list of strings"),
    ],
)
def test_recipients_and_channels_the_tables_would_refuse_raise_trigger_error(
    new_session: SessionFactory, schema: str, options: dict[str, Any], error: str
) -> None:
    with new_session() as session:
        with pytest.raises(TriggerError, match=error):
            trigger(session, Scripted(**options), {}, idempotency_key="r", queue_schema=schema)
        assert_usable_and_empty(session)


class PasswordReset(Notifier):
    notification_key = "password_reset"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return [f"user:{params['user_id']}"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": "Reset your password", "reset_token": params["reset_token"], "author": "Support"}


def test_the_secrets_the_review_found_stored_are_no_longer_stored(
    new_session: SessionFactory, schema: str
) -> None:
    params = {
        "user_id": 42,
        "password": "p",
        "access_token": "AT-123",
        "api_key": "AK-456",
        "reset_token": "RT",
    }
    with new_session(expire_on_commit=False) as session:
        result = trigger(session, PasswordReset(), params, idempotency_key="reset", queue_schema=schema)
        session.commit()
        assert result.event.payload == {"user_id": 42}
        assert notifications_of(session, result)[0].metadata_ == {
            "subject": "Reset your password",
            "author": "Support",
        }
