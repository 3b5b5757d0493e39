"""Delivery policies: settings validated at upsert, and the perform checkpoint of the dispatch claim
(preferences rechecked, delivery caps, quiet hours deferring a delivery to a snoozed job)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import pgqueue
import pgqueue.testing
from chimeway import deliveries, dispatch, policy, preferences
from chimeway.adapters import Delivered, Failed, TestAdapter
from chimeway.dispatch import ChannelRoute, Dispatcher, DispatchWorker
from chimeway.errors import InvalidValue
from chimeway.models import Delivery, Notification, PolicySettings
from pgqueue.testing import build_job, perform_job

from ..helpers import AsyncCountingCursor
from .conftest import MakeDelivery, MakeNotification, SessionFactory

RECIPIENT = "user:42"


def perform(delivery_id: uuid.UUID, attempt: int = 1) -> Any:
    return perform_job(DispatchWorker, {"delivery_id": str(delivery_id)}, attempt=attempt)


def row(new_session: SessionFactory, delivery_id: uuid.UUID) -> Delivery:
    with new_session(expire_on_commit=False) as session:
        return deliveries.get_delivery(session, delivery_id)


def sent_to(adapter: TestAdapter) -> list[uuid.UUID]:
    return [call.delivery.delivery_id for call in adapter.calls()]


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: policy.QuietHours(time(22), time(7), "Mars/Olympus_Mons"), "quiet_hours.time_zone"),
        (lambda: policy.QuietHours(time(22), time(7), ""), "quiet_hours.time_zone"),
        (lambda: policy.QuietHours(time(22), time(7), "../../etc/passwd"), "quiet_hours.time_zone"),
        (lambda: policy.QuietHours("22:00", "22:00", "Europe/Paris"), "quiet_hours.end"),
        (lambda: policy.QuietHours("25:00", "07:00", "Europe/Paris"), "quiet_hours.start"),
        (lambda: policy.QuietHours(time(22, 0, 30), "07:00", "Europe/Paris"), "quiet_hours.start"),
        (lambda: policy.DeliveryCap(0, timedelta(hours=1)), "delivery_cap.count"),
        (lambda: policy.DeliveryCap(True, timedelta(hours=1)), "delivery_cap.count"),
        (lambda: policy.DeliveryCap(3, timedelta(minutes=-5)), "delivery_cap.window"),
        (lambda: policy.DeliveryCap(3, timedelta(0)), "delivery_cap.window"),
        (lambda: policy.DeliveryCap(3, timedelta(seconds=90)), "delivery_cap.window"),
        (lambda: policy.DeliveryCap(3, timedelta(days=400)), "delivery_cap.window"),
    ],
)
def test_bad_settings_are_refused_with_an_error_naming_the_field(build: Any, field: str) -> None:
    with pytest.raises(InvalidValue, match=f"^{field} must be") as raised:
        build()
    assert raised.value.name == field


def test_a_refused_upsert_writes_nothing(new_session: SessionFactory) -> None:
    with new_session() as session:
        with pytest.raises(InvalidValue, match="^quiet_hours must be"):
            policy.upsert_settings(session, RECIPIENT, quiet_hours="22:00-07:00")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue, match="^recipient_id must be"):
            policy.upsert_settings(session, "  ", delivery_cap=policy.DeliveryCap(1, timedelta(hours=1)))
        session.commit()
    with new_session() as session:
        assert session.query(PolicySettings).count() == 0


def test_settings_round_trip_and_an_upsert_replaces_them(new_session: SessionFactory) -> None:
    quiet = policy.QuietHours("22:30", "07:00", "America/New_York")
    cap = policy.DeliveryCap(3, 90)
    with new_session() as session:
        stored = policy.upsert_settings(session, RECIPIENT, quiet_hours=quiet, delivery_cap=cap)
        session.commit()
    assert stored == policy.Policy(RECIPIENT, quiet, policy.DeliveryCap(3, timedelta(minutes=90)))
    with new_session() as session:
        assert policy.get_settings(session, RECIPIENT) == stored
        policy.upsert_settings(session, RECIPIENT, delivery_cap=cap)
        session.commit()
    with new_session() as session:
        assert policy.get_settings(session, RECIPIENT) == policy.Policy(RECIPIENT, None, cap)
        assert policy.get_settings(session, "user:7") is None
        assert policy.delete_settings(session, RECIPIENT) is True
        assert policy.delete_settings(session, RECIPIENT) is False
        session.commit()
        assert policy.get_settings(session, RECIPIENT) is None


@pytest.mark.anyio
async def test_the_async_twins_store_and_read_the_same_settings(
    sa_async_engine: AsyncEngine, schema: str
) -> None:
    engine = sa_async_engine.execution_options(schema_translate_map={None: schema})
    quiet = policy.QuietHours(time(23), time(6), "Asia/Tokyo")
    async with AsyncSession(engine) as session:
        await policy.aupsert_settings(session, RECIPIENT, quiet_hours=quiet)
        await policy.aupsert_category_preference(session, RECIPIENT, "marketing", enabled=False)
        await policy.aupsert_channel_preference(session, RECIPIENT, "comment_posted", "email", enabled=False)
        await session.commit()
    async with AsyncSession(engine) as session:
        assert await policy.aget_settings(session, RECIPIENT) == policy.Policy(RECIPIENT, quiet, None)
        # 23:30 in Tokyo (UTC+9, no DST) is 14:30 UTC; the quiet hours end at 06:00 Tokyo, 21:00 UTC
        at = datetime(2026, 7, 1, 14, 30, tzinfo=UTC)
        assert await policy.anext_eligible_at(session, RECIPIENT, at) == datetime(
            2026, 7, 1, 21, 0, tzinfo=UTC
        )
        assert (
            await session.run_sync(lambda sync: preferences.category_enabled(sync, RECIPIENT, "marketing"))
            is False
        )
        assert (
            await session.run_sync(
                lambda sync: preferences.channel_enabled(sync, RECIPIENT, "comment_posted", "email")
            )
            is False
        )
        assert await policy.adelete_settings(session, RECIPIENT) is True
        await session.commit()


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # the night New York springs forward (2026-03-08 02:00 EST → 03:00 EDT): 22:00 EST → 07:00 EDT
        (datetime(2026, 3, 8, 3, 0, tzinfo=UTC), datetime(2026, 3, 8, 11, 0, tzinfo=UTC)),
        # the night it falls back (2026-11-01 02:00 EDT → 01:00 EST): 23:00 EDT → 07:00 EST
        (datetime(2026, 11, 1, 3, 0, tzinfo=UTC), datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
        # after midnight, the same night's end
        (datetime(2026, 6, 1, 9, 0, tzinfo=UTC), datetime(2026, 6, 1, 11, 0, tzinfo=UTC)),
        # midday: no quiet hours
        (datetime(2026, 6, 1, 16, 0, tzinfo=UTC), None),
        # 07:00 sharp is already allowed, 21:59 still is
        (datetime(2026, 6, 1, 11, 0, tzinfo=UTC), None),
        (datetime(2026, 6, 2, 1, 59, tzinfo=UTC), None),
    ],
)
def test_quiet_hours_end_at_the_local_time_across_daylight_saving_changes(
    new_session: SessionFactory, at: datetime, expected: datetime | None
) -> None:
    with new_session() as session:
        policy.upsert_settings(
            session, RECIPIENT, quiet_hours=policy.QuietHours("22:00", "07:00", "America/New_York")
        )
        session.commit()
        assert policy.next_eligible_at(session, RECIPIENT, at) == expected
        if expected is not None:
            local_end = expected.astimezone(ZoneInfo("America/New_York"))
            assert (local_end.hour, local_end.minute) == (7, 0)


# -- the perform checkpoint ------------------------------------------------------------------------


def test_a_channel_turned_off_after_planning_is_suppressed_at_perform_time(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    email, in_app = make_delivery(channel="email"), make_delivery(channel="in_app")
    with new_session() as session:
        preferences.upsert_channel_preference(session, RECIPIENT, "comment_posted", "email", enabled=False)
        session.commit()

    assert perform(email) is None
    assert perform(in_app) is None

    turned_off = row(new_session, email)
    assert (turned_off.status, turned_off.suppression_reason) == ("suppressed", "channel_disabled")
    assert turned_off.metadata_["policy_checkpoint"] == "perform"
    assert sent_to(test_adapter) == [in_app]
    assert row(new_session, in_app).status == "succeeded"


def test_a_category_turned_off_after_planning_is_suppressed_at_perform_time(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    make_notification: MakeNotification,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    notification = make_notification()
    delivery_id = make_delivery(notification_id=notification)
    with new_session() as session:
        session.execute(update(Notification).where(Notification.id == notification).values(category="digest"))
        preferences.upsert_category_preference(session, RECIPIENT, "digest", enabled=False)
        session.commit()

    assert perform(delivery_id) is None

    suppressed = row(new_session, delivery_id)
    assert (suppressed.status, suppressed.suppression_reason) == ("suppressed", "category_disabled")
    assert test_adapter.calls() == []
    with new_session() as session:
        why = deliveries.explain_delivery(session, delivery_id).why
    assert why == "suppressed by policy at the perform checkpoint: category_disabled"


def cap(new_session: SessionFactory, count: int, window: timedelta = timedelta(hours=1)) -> None:
    with new_session() as session:
        policy.upsert_settings(session, RECIPIENT, delivery_cap=policy.DeliveryCap(count, window))
        session.commit()


@pytest.mark.anyio
async def test_a_cap_lets_n_deliveries_out_per_window_even_within_one_batch(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    cap(new_session, 2)
    ids = [make_delivery(channel=channel) for channel in ("email", "in_app", "sms")]
    other = make_delivery(notification_id=None, channel="push")  # the same recipient, later

    jobs = [build_job(DispatchWorker, DispatchWorker.new({"delivery_id": str(i)})) for i in ids]
    async with dispatcher:
        assert await asyncio.gather(*(dispatcher.perform(job) for job in jobs)) == [None] * 3
        later = build_job(DispatchWorker, DispatchWorker.new({"delivery_id": str(other)}))
        assert await dispatcher.perform(later) is None

    rows = {i: row(new_session, i) for i in [*ids, other]}
    outcomes = sorted((r.status, r.suppression_reason) for r in rows.values())
    assert outcomes == [
        ("succeeded", None),
        ("succeeded", None),
        ("suppressed", "delivery_cap_reached"),
        ("suppressed", "delivery_cap_reached"),
    ]
    # within the batch, the lower ids went first
    assert sorted(sent_to(test_adapter)) == sorted(ids)[:2]
    capped = rows[other]
    assert capped.metadata_["delivery_cap"] == {"count": 2, "window_minutes": 60}
    assert capped.metadata_["policy_checkpoint"] == "perform"


def test_sends_leave_the_cap_when_they_leave_its_window(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    cap(new_session, 1, timedelta(minutes=10))
    first, second, third = make_delivery(), make_delivery(), make_delivery()
    assert perform(first) is None
    assert perform(second) is None
    assert row(new_session, second).suppression_reason == "delivery_cap_reached"
    with new_session() as session:  # the first send was eleven minutes ago
        session.execute(
            update(PolicySettings).values(cap_sent_at=[datetime.now(UTC) - timedelta(minutes=11)])
        )
        session.commit()

    assert perform(third) is None

    assert row(new_session, third).status == "succeeded"
    assert sent_to(test_adapter) == [first, third]


def test_a_retry_does_not_count_against_the_cap_again(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    cap(new_session, 1)
    delivery_id = make_delivery()
    test_adapter.script(Failed("temporary", {"status_code": 503}), delivery_id=delivery_id)
    assert isinstance(perform(delivery_id), pgqueue.Error)
    test_adapter.script(Delivered({}), delivery_id=delivery_id)

    assert perform(delivery_id, attempt=2) is None

    assert row(new_session, delivery_id).status == "succeeded"
    with new_session() as session:
        sent = len(session.scalars(select(PolicySettings.cap_sent_at)).one())
    assert sent == 1


def test_concurrent_workers_never_send_past_the_cap(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    cap(new_session, 3)
    ids = [make_delivery() for _ in range(12)]

    def one(delivery_id: uuid.UUID) -> Any:
        return perform(delivery_id)

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(one, ids)) == [None] * 12

    statuses = sorted(row(new_session, i).status for i in ids)
    assert statuses == ["succeeded"] * 3 + ["suppressed"] * 9
    assert len(test_adapter.calls()) == 3


def quiet_now(zone: str, *, ends_in_minutes: int) -> policy.QuietHours:
    """Quiet hours that started an hour ago in ``zone`` and end ``ends_in_minutes`` from now
    (rounded up to the next whole minute)."""
    local = datetime.now(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    start, end = (minute - 60) % 1440, (minute + ends_in_minutes) % 1440
    return policy.QuietHours(time(*divmod(start, 60)), time(*divmod(end, 60)), zone)


def test_in_quiet_hours_the_delivery_is_deferred_and_its_job_snoozed_until_they_end(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    quiet = quiet_now("Australia/Lord_Howe", ends_in_minutes=90)  # a half-hour DST shift, for once
    with new_session() as session:
        policy.upsert_settings(session, RECIPIENT, quiet_hours=quiet)
        session.commit()
    delivery_id = make_delivery()

    result = perform(delivery_id)

    assert isinstance(result, pgqueue.Snooze)
    deferred = row(new_session, delivery_id)
    assert (deferred.status, deferred.orchestration_state, deferred.planning_reason) == (
        "pending",
        "deferred",
        "quiet_hours",
    )
    assert deferred.next_eligible_at is not None
    waits = (deferred.next_eligible_at - datetime.now(UTC)).total_seconds()
    assert 88 * 60 < waits <= 90 * 60
    assert abs(result.seconds - waits) < 5
    assert deferred.planning_context == {
        "rule": "quiet_hours",
        "time_zone": "Australia/Lord_Howe",
        "quiet_hours_start_minute": quiet.start_minute,
        "quiet_hours_end_minute": quiet.end_minute,
    }
    assert test_adapter.calls() == []

    # The job running early (run by hand, say) finds it not due and snoozes again.
    again = perform(delivery_id)
    assert isinstance(again, pgqueue.Snooze)
    assert abs(again.seconds - result.seconds) < 5
    assert row(new_session, delivery_id).orchestration_state == "deferred"
    with new_session() as session:
        explanation = deliveries.explain_delivery(session, delivery_id)
    assert [e.event for e in explanation.timeline][-1] == "deferred"
    assert explanation.why.startswith("deferred by quiet hours until ")


def test_deliver_now_takes_the_same_checkpoint(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
) -> None:
    cap(new_session, 1)
    first, second = make_delivery(), make_delivery(channel="email")
    assert dispatcher.deliver_now(first).status == "succeeded"
    capped = dispatcher.deliver_now(second)
    assert (capped.status, capped.suppression_reason) == ("suppressed", "delivery_cap_reached")
    assert sent_to(test_adapter) == [first]


def wait_for(condition: Any, deadline: float, what: str) -> None:
    """Poll ``condition`` until it holds, failing after ``deadline`` seconds."""
    import time as clock

    give_up = clock.monotonic() + deadline
    while not condition():
        if clock.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        clock.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(240)
# It waits for a minute boundary of the wall clock, using no CPU: it runs beside the other tests.
@pytest.mark.xdist_group("quiet_hours_clock")
def test_the_snoozed_job_releases_the_delivery_when_the_quiet_hours_end(
    dispatcher: Dispatcher,
    make_delivery: MakeDelivery,
    new_session: SessionFactory,
    test_adapter: TestAdapter,
    dsn: str,
    schema: str,
) -> None:
    # Quiet hours that end at the next whole minute (the one after, if that is too close).
    seconds_left = 60 - datetime.now(UTC).second
    quiet = quiet_now("Europe/Paris", ends_in_minutes=1 if seconds_left > 15 else 2)
    with new_session() as session:
        policy.upsert_settings(session, RECIPIENT, quiet_hours=quiet)
        session.commit()
    delivery_id = make_delivery()
    with new_session() as session:
        dispatch.enqueue_in(session, delivery_id, schema=schema)
        session.commit()

    # First run: deferred, the job snoozed until the end of the quiet hours.
    assert pgqueue.testing.drain_queue(dsn, dispatch.QUEUE, schema=schema).snoozed == 1
    deferred = row(new_session, delivery_id)
    assert deferred.orchestration_state == "deferred"
    assert deferred.next_eligible_at is not None
    # Run early anyway: still deferred, snoozed again, nothing sent.
    assert pgqueue.testing.drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True).snoozed == 1
    assert test_adapter.calls() == []

    def due() -> bool:
        with new_session() as session:
            return bool(
                session.scalar(
                    select(func.now() >= Delivery.next_eligible_at + timedelta(seconds=1)).where(
                        Delivery.id == delivery_id
                    )
                )
            )

    wait_for(due, 150, "the end of the quiet hours")
    drained = pgqueue.testing.drain_queue(
        dsn, dispatch.QUEUE, schema=schema, with_scheduled=datetime.now(UTC)
    )

    assert drained.success == 1
    released = row(new_session, delivery_id)
    assert (released.status, released.orchestration_state) == ("succeeded", "ready")
    assert released.metadata_["resume_source"] == "scheduled_job"
    assert sent_to(test_adapter) == [delivery_id]
    with new_session() as session:
        explanation = deliveries.explain_delivery(session, delivery_id)
    events = [entry.event for entry in explanation.timeline]
    assert events == [
        "event_created",
        "delivery_planned",
        "deferred",
        "released",
        "attempt_succeeded",
        "succeeded",
    ]
    released_entry = explanation.timeline[3]
    assert released_entry.at >= deferred.next_eligible_at


@pytest.fixture
async def counted_pool(dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "cursor_factory": AsyncCountingCursor},
    )
    await pool.open()
    yield pool
    await pool.close()


@pytest.mark.anyio
async def test_policies_keep_a_batch_at_two_statements(
    counted_pool: AsyncConnectionPool[Any],
    schema: str,
    make_delivery: MakeDelivery,
    make_notification: MakeNotification,
    new_session: SessionFactory,
) -> None:
    # 100 deliveries of 50 recipients: half capped at one send, one recipient opted out of email
    ids = [
        make_delivery(channel=channel, notification_id=make_notification(recipient=f"user:{n}"))
        for n in range(50)
        for channel in ("email", "in_app")
    ]
    with new_session() as session:
        for n in range(0, 50, 2):
            policy.upsert_settings(
                session, f"user:{n}", delivery_cap=policy.DeliveryCap(1, timedelta(hours=1))
            )
        preferences.upsert_channel_preference(session, "user:1", "comment_posted", "email", enabled=False)
        session.commit()
    sent: list[uuid.UUID] = []

    class Instant:
        """An async adapter that answers at once, so the batch's records go out together."""

        name = "instant"

        async def deliver(self, delivery: Any, config: Any) -> Delivered:
            sent.append(delivery.delivery_id)
            return Delivered({})

    dispatcher = Dispatcher(pool=counted_pool, schema=schema, default=ChannelRoute(Instant()))
    AsyncCountingCursor.reset()

    jobs = [build_job(DispatchWorker, DispatchWorker.new({"delivery_id": str(i)})) for i in ids]
    async with dispatcher:
        assert await asyncio.gather(*(dispatcher.perform(job) for job in jobs)) == [None] * 100

    assert AsyncCountingCursor.statements() == 2, "one claim and one record, policies and all"
    statuses = sorted((d.status, d.suppression_reason) for d in (row(new_session, i) for i in ids))
    assert statuses.count(("suppressed", "delivery_cap_reached")) == 25
    assert statuses.count(("suppressed", "channel_disabled")) == 1
    assert statuses.count(("succeeded", None)) == 74
    assert len(sent) == 74
