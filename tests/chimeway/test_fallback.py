"""The delayed fallback: a channel sent only if the in-app notification is still unread later."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries, dispatch, inbox
from chimeway.adapters import TestAdapter
from chimeway.dispatch import Dispatcher
from chimeway.models import Delivery
from chimeway.notifier import Notifier, Recipient
from chimeway.trigger import TriggerError, TriggerResult, atrigger, trigger
from pgqueue.testing import drain_queue

from .conftest import SessionFactory

DELAY = 600.0


class Mentioned(Notifier):
    notification_key = "mentioned"
    fallback_delay = DELAY

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return ["user:1"]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["in_app", "email", "sms"]

    def delayed_fallback_channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return params.get("fallbacks", ["email"])

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"body": "you were mentioned"}


def by_channel(session: Session, result: TriggerResult) -> dict[str, Delivery]:
    rows = session.scalars(select(Delivery).where(Delivery.id.in_(result.delivery_ids)))
    return {row.channel: row for row in rows}


def jobs_by_delivery(session: Session, schema: str) -> dict[str, pgqueue.Job]:
    return {job.args["delivery_id"]: job for job in pgqueue.all_jobs(session, schema=schema)}


def fire(new_session: SessionFactory, schema: str, **params: Any) -> TriggerResult:
    with new_session(expire_on_commit=False) as session:
        result = trigger(session, Mentioned(), params, idempotency_key="mention-1", queue_schema=schema)
        session.commit()
    return result


def test_the_fallback_channel_is_planned_as_such_and_its_job_waits_for_the_delay(
    new_session: SessionFactory, schema: str
) -> None:
    result = fire(new_session, schema)

    with new_session() as session:
        planned = by_channel(session, result)
        jobs = jobs_by_delivery(session, schema)
    email = planned["email"]
    assert email.delay_fallback is True
    assert email.metadata_["delayed_fallback_source"] == "notifier"
    assert [planned[c].delay_fallback for c in ("in_app", "sms")] == [False, False]
    assert len(result.job_ids) == 3
    assert result.job_ids[-1] == jobs[str(email.id)].id  # the delayed jobs come last
    delayed = jobs[str(email.id)]
    assert delayed.state == "scheduled"
    assert abs((delayed.scheduled_at - delayed.inserted_at).total_seconds() - DELAY) < 1
    assert {jobs[str(planned[c].id)].state for c in ("in_app", "sms")} == {"available"}


def test_a_fallback_read_meanwhile_is_suppressed_already_read_without_a_send(
    dispatcher: Dispatcher, new_session: SessionFactory, schema: str, dsn: str, test_adapter: TestAdapter
) -> None:
    result = fire(new_session, schema)
    # now: in_app and sms go out, email waits
    assert drain_queue(dsn, dispatch.QUEUE, schema=schema).success == 2
    assert sorted(call.delivery.channel for call in test_adapter.calls()) == ["in_app", "sms"]

    with new_session() as session:
        assert inbox.mark_read(session, "user:1", result.notification_ids[0])
        session.commit()
    # the delay passes (every scheduled job staged now)
    assert drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True).success == 1

    with new_session() as session:
        email = by_channel(session, result)["email"]
        explanation = deliveries.explain_delivery(session, email.id)
    assert (email.status, email.suppression_reason) == ("suppressed", "already_read")
    assert email.metadata_["policy_checkpoint"] == "perform"
    assert [call.delivery.channel for call in test_adapter.calls()] == ["in_app", "sms"]
    assert [entry.event for entry in explanation.timeline][-2:] == ["notification_read", "suppressed"]


def test_an_unread_fallback_is_sent_after_the_delay(
    dispatcher: Dispatcher, new_session: SessionFactory, schema: str, dsn: str, test_adapter: TestAdapter
) -> None:
    result = fire(new_session, schema)
    assert drain_queue(dsn, dispatch.QUEUE, schema=schema).success == 2

    assert drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True).success == 1

    with new_session() as session:
        assert by_channel(session, result)["email"].status == "succeeded"
    assert sorted(call.delivery.channel for call in test_adapter.calls()) == ["email", "in_app", "sms"]


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        (["in_app"], "must not include 'in_app'"),
        (["push"], "'push' is not one of the recipient's channels"),
        ("email", "must be a list of strings"),
        ([7], "must be a list of strings"),
    ],
)
def test_a_bad_fallback_channel_is_refused_and_nothing_is_written(
    new_session: SessionFactory, schema: str, fallbacks: object, message: str
) -> None:
    with new_session() as session:
        with pytest.raises(TriggerError, match=message):
            trigger(
                session, Mentioned(), {"fallbacks": fallbacks}, idempotency_key="bad", queue_schema=schema
            )
        session.rollback()
        assert session.scalars(select(Delivery)).all() == []
        assert pgqueue.all_jobs(session, schema=schema) == []


@pytest.mark.parametrize("delay", [-1, float("nan"), True, "600"])
def test_a_bad_fallback_delay_is_refused(new_session: SessionFactory, schema: str, delay: object) -> None:
    notifier = Mentioned()
    notifier.fallback_delay = delay  # type: ignore[assignment]
    with new_session() as session, pytest.raises(TriggerError, match="^fallback_delay must be"):
        trigger(session, notifier, {}, idempotency_key="bad-delay", queue_schema=schema)


@pytest.mark.anyio
async def test_the_async_trigger_plans_the_same_fallback(sa_async_session: AsyncSession, schema: str) -> None:
    result = await atrigger(
        sa_async_session, Mentioned(), {}, idempotency_key="mention-async", queue_schema=schema
    )
    await sa_async_session.commit()

    planned = await sa_async_session.run_sync(lambda session: by_channel(session, result))
    jobs = await sa_async_session.run_sync(lambda session: jobs_by_delivery(session, schema))
    assert planned["email"].delay_fallback is True
    assert jobs[str(planned["email"].id)].state == "scheduled"
    assert jobs[str(planned["in_app"].id)].state == "available"
