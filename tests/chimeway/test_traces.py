"""Traces: an event and everything it became, found by id, recipient or correlation id, and counted."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from chimeway import dispatch, policy, preferences, traces
from chimeway.adapters import Failed, TestAdapter
from chimeway.dispatch import Dispatcher
from chimeway.errors import InvalidValue
from chimeway.notifier import Notifier, Recipient
from chimeway.traces import OutcomeCount
from chimeway.trigger import TriggerResult, trigger
from pgqueue.testing import drain_queue

from .conftest import SessionFactory


class Shipped(Notifier):
    notification_key = "order_shipped"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return params["to"]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return params.get("channels", ["in_app", "email"])


class Mentioned(Shipped):
    notification_key = "mentioned"


def fire(
    new_session: SessionFactory,
    schema: str,
    notifier: Notifier,
    to: list[str],
    *,
    correlation_id: str | None = None,
    **params: Any,
) -> TriggerResult:
    with new_session(expire_on_commit=False) as session:
        result = trigger(
            session,
            notifier,
            {"to": to, **params},
            idempotency_key=str(uuid.uuid4()),
            correlation_id=correlation_id,
            queue_schema=schema,
        )
        session.commit()
    return result


def test_a_trace_holds_the_event_its_notifications_deliveries_and_attempts(
    dispatcher: Dispatcher, new_session: SessionFactory, schema: str, dsn: str
) -> None:
    result = fire(new_session, schema, Shipped(), ["user:2", "user:1", "user:3"], correlation_id="req-1")
    assert drain_queue(dsn, dispatch.QUEUE, schema=schema).success == 6

    with new_session() as session:
        trace = traces.get_trace(session, result.event.id)
        assert traces.get_trace(session, uuid.uuid4()) is None
        with pytest.raises(InvalidValue, match="^event_id must be a UUID"):
            traces.get_trace(session, "not-an-id")

    assert trace is not None
    assert (trace.event_id, trace.notification_key, trace.correlation_id, trace.truncated) == (
        result.event.id,
        "order_shipped",
        "req-1",
        False,
    )
    assert [n.recipient for n in trace.notifications] == ["user:1", "user:2", "user:3"]
    assert sorted(trace.delivery_ids) == sorted(result.delivery_ids)
    for notification in trace.notifications:
        assert [d.channel for d in notification.deliveries] == ["email", "in_app"]
        for delivery in notification.deliveries:
            assert delivery.status == "succeeded"
            assert [(a.number, a.outcome) for a in delivery.attempts] == [(1, "succeeded")]


def test_a_trace_of_a_large_fan_out_is_truncated_at_its_limit(
    new_session: SessionFactory, schema: str
) -> None:
    result = fire(new_session, schema, Shipped(), [f"user:{i}" for i in range(5)], channels=["in_app"])
    with new_session() as session:
        trace = traces.get_trace(session, result.event.id, notifications_limit=2)
        with pytest.raises(InvalidValue, match="^notifications_limit must be a positive integer"):
            traces.get_trace(session, result.event.id, notifications_limit=0)
    assert trace is not None
    assert [n.recipient for n in trace.notifications] == ["user:0", "user:1"]
    assert trace.truncated


def test_a_recipients_traces_are_theirs_only_newest_first_and_filtered_by_key(
    new_session: SessionFactory, schema: str
) -> None:
    first = fire(new_session, schema, Shipped(), ["user:1", "user:2"])
    second = fire(new_session, schema, Mentioned(), ["user:1"])
    third = fire(new_session, schema, Shipped(), ["user:1"])
    fire(new_session, schema, Shipped(), ["user:2"])

    with new_session() as session:
        everything = traces.find_traces_for_recipient(session, "user:1")
        shipped = traces.find_traces_for_recipient(session, "user:1", notification_key="order_shipped")
        newest = traces.find_traces_for_recipient(session, "user:1", limit=1)
        clamped = traces.find_traces_for_recipient(session, "user:1", limit=10**9)
        with pytest.raises(InvalidValue, match="^identity must be"):
            traces.find_traces_for_recipient(session, "")

    assert [t.event_id for t in everything] == [third.event.id, second.event.id, first.event.id]
    assert [t.event_id for t in shipped] == [third.event.id, first.event.id]
    assert [t.event_id for t in newest] == [third.event.id]
    assert len(clamped) == 3
    assert {n.recipient for t in everything for n in t.notifications} == {"user:1"}


def test_traces_by_correlation_id_are_every_event_of_the_request_oldest_first(
    new_session: SessionFactory, schema: str
) -> None:
    first = fire(new_session, schema, Shipped(), ["user:1"], correlation_id="req-9")
    second = fire(new_session, schema, Mentioned(), ["user:2", "user:3"], correlation_id="req-9")
    fire(new_session, schema, Shipped(), ["user:1"], correlation_id="req-other")

    with new_session() as session:
        found = traces.find_traces_by_correlation_id(session, "req-9")
        assert traces.find_traces_by_correlation_id(session, "req-none") == []

    assert [t.event_id for t in found] == [first.event.id, second.event.id]
    assert [len(t.notifications) for t in found] == [1, 2]


def test_outcomes_are_counted_by_key_channel_and_bucket(
    dispatcher: Dispatcher,
    new_session: SessionFactory,
    schema: str,
    dsn: str,
    test_adapter: TestAdapter,
) -> None:
    with new_session() as session:
        preferences.upsert_channel_preference(session, "user:2", "order_shipped", "email", enabled=False)
        local = datetime.now(UTC)
        quiet = policy.QuietHours(time((local.hour - 1) % 24), time((local.hour + 2) % 24), "UTC")
        policy.upsert_settings(session, "user:3", quiet_hours=quiet)
        session.commit()
    before = datetime.now(UTC) - timedelta(seconds=1)
    fire(new_session, schema, Shipped(), ["user:1", "user:2", "user:3", "user:4"], correlation_id="c")
    with new_session() as session:  # user:4's email is refused for good
        (user4,) = traces.find_traces_for_recipient(session, "user:4")[0].notifications
    (email4,) = [d.id for d in user4.deliveries if d.channel == "email"]
    test_adapter.script(Failed("permanent", {"status_code": 400}), delivery_id=email4)
    drain_queue(dsn, dispatch.QUEUE, schema=schema)
    fire(new_session, schema, Mentioned(), ["user:1"], channels=["sms"])  # not dispatched yet

    with new_session() as session:
        counts = traces.aggregate_outcomes(session)
        only_email = traces.aggregate_outcomes(session, {"channel": "email", "since": before})
        mine = traces.aggregate_outcomes(session, {"recipient": "user:1", "correlation_id": "c"})
        assert traces.aggregate_outcomes(session, {"until": before}) == []
        with pytest.raises(InvalidValue, match="^filter 'status' must be one of notification_key"):
            traces.aggregate_outcomes(session, {"status": "succeeded"})
        with pytest.raises(InvalidValue, match="^since must be a timezone-aware datetime"):
            traces.aggregate_outcomes(session, {"since": "yesterday"})

    assert counts == [
        OutcomeCount("mentioned", "sms", "in_flight", 1),
        OutcomeCount("order_shipped", "email", "deferred", 1),
        OutcomeCount("order_shipped", "email", "delivered", 1),
        OutcomeCount("order_shipped", "email", "failed", 1),
        OutcomeCount("order_shipped", "email", "suppressed", 1),
        OutcomeCount("order_shipped", "in_app", "deferred", 1),
        OutcomeCount("order_shipped", "in_app", "delivered", 3),
    ]
    assert only_email == [c for c in counts if c.channel == "email"]
    assert mine == [
        OutcomeCount("order_shipped", "email", "delivered", 1),
        OutcomeCount("order_shipped", "in_app", "delivered", 1),
    ]


@pytest.mark.anyio
async def test_the_async_twins_read_the_same_traces(
    sa_async_session: AsyncSession, new_session: SessionFactory, schema: str
) -> None:
    result = fire(new_session, schema, Shipped(), ["user:1"], correlation_id="req-a")

    trace = await traces.aget_trace(sa_async_session, result.event.id)
    by_recipient = await traces.afind_traces_for_recipient(sa_async_session, "user:1")
    by_correlation = await traces.afind_traces_by_correlation_id(sa_async_session, "req-a")
    counts = await traces.aaggregate_outcomes(sa_async_session, {"notification_key": "order_shipped"})
    explanation = await traces.aexplain_delivery(sa_async_session, result.delivery_ids[0])

    with new_session() as session:
        assert trace == traces.get_trace(session, result.event.id)
    assert by_recipient == by_correlation == [trace]
    assert counts == [
        OutcomeCount("order_shipped", "email", "in_flight", 1),
        OutcomeCount("order_shipped", "in_app", "in_flight", 1),
    ]
    assert explanation.why == "pending: planned, not dispatched yet"
