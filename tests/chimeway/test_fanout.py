"""Set-wise fan-out: ``trigger`` to thousands of recipients writes exactly what the one-delivery
functions write, in a fixed number of statements, all or nothing, once per idempotency key."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries, inbox, preferences
from chimeway.dispatch import DispatchWorker, dispatch_job, enqueue_in
from chimeway.models import Delivery, Event, Notification
from chimeway.notifier import Notifier, Recipient
from chimeway.redaction import redact
from chimeway.trigger import TriggerResult, atrigger, trigger
from pgqueue.store import channel_name
from tests.helpers import CountingCursor

from .conftest import SessionFactory

KEY = "release_notes"
CATEGORY = "product"


class ReleaseNotes(Notifier):
    """Recipients ``user:0 … user:n-1``; email and sms, except every fifth recipient gets in_app too."""

    notification_key = KEY
    category = CATEGORY

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return [f"user:{i}" for i in range(params["count"])]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        number = int(recipient.identity.split(":")[1])
        return ["sms", "email", "in_app"] if number % 5 == 0 else ["email", "sms"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": params["version"], "to": recipient.identity, "session_id": "s-1"}


def set_preferences(session: Session, count: int) -> None:
    """A mix of every kind of choice, committed: opt-outs of each channel, of this key only, of the
    category, explicit opt-ins, and opt-outs that don't apply (another key, another category)."""
    for i in range(count):
        who = f"user:{i}"
        if i % 7 == 0:
            preferences.upsert_channel_preference(session, who, KEY, "email", enabled=False)
        if i % 11 == 0:
            preferences.upsert_channel_preference(session, who, KEY, "sms", enabled=False)
        if i % 13 == 0:
            preferences.upsert_channel_preference(session, who, KEY, "in_app", enabled=True)
        if i % 17 == 0:
            preferences.upsert_channel_preference(session, who, "other_key", "email", enabled=False)
        if i % 19 == 0:
            preferences.upsert_category_preference(session, who, CATEGORY, enabled=False)
        if i % 23 == 0:
            preferences.upsert_category_preference(session, who, "other_category", enabled=False)
    session.commit()


def count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def planned_rows(session: Session, event_id: uuid.UUID) -> dict[tuple[str, str], dict[str, Any]]:
    """Every delivery of an event with its notification, keyed by (recipient, channel), ids left out."""
    rows = session.execute(
        select(Delivery, Notification)
        .join(Notification, Notification.id == Delivery.notification_id)
        .where(Notification.event_id == event_id)
    ).all()
    planned = {}
    for delivery, notification in rows:
        metadata = dict(delivery.metadata_)
        assert metadata.pop("event_id") == str(event_id)
        planned[(notification.recipient_identity, delivery.channel)] = {
            "recipient_type": notification.recipient_type,
            "content": notification.metadata_,
            "status": delivery.status,
            "reason": delivery.suppression_reason,
            "metadata": metadata,
            "actor": delivery.actor_id,
            "tenant": delivery.tenant_id,
            "fallback": delivery.delay_fallback,
            "orchestration": delivery.orchestration_state,
        }
    return planned


def jobs_by_delivery(session: Session, schema: str) -> dict[str, pgqueue.Job]:
    jobs = pgqueue.all_jobs(session, schema=schema, limit=100_000)
    by_delivery = {job.args["delivery_id"]: job for job in jobs}
    assert len(by_delivery) == len(jobs)
    return by_delivery


def plan_per_row(session: Session, notifier: Notifier, params: Mapping[str, Any], schema: str) -> uuid.UUID:
    """The same event planned one row at a time with the one-delivery functions, as trigger once did."""
    event = Event(
        notification_key=KEY,
        notification_version=1,
        idempotency_key=f"per-row-{uuid.uuid4()}",
        payload=dict(params),
        correlation_id="req-7",
    )
    session.add(event)
    session.flush()
    for identity in sorted(str(r) for r in notifier.recipients(params)):
        recipient = Recipient(identity)
        notification = Notification(
            event_id=event.id,
            recipient_identity=identity,
            recipient_type="user",
            metadata_=redact(notifier.build(params, recipient)),
        )
        session.add(notification)
        session.flush()
        for channel in sorted(set(notifier.channels(params, recipient))):
            delivery = deliveries.plan_delivery(
                session,
                notification.id,
                channel,
                actor_id=identity,
                notification_key=KEY,
                event_id=event.id,
                correlation_id="req-7",
            )
            if not preferences.channel_enabled(session, identity, KEY, channel):
                deliveries.suppress_delivery(session, delivery, "channel_disabled", checkpoint="planning")
            elif not preferences.category_enabled(session, identity, CATEGORY):
                deliveries.suppress_delivery(session, delivery, "category_disabled", checkpoint="planning")
            if delivery.status == "pending":
                enqueue_in(session, delivery.id, schema=schema)
    return event.id


def test_the_set_wise_rows_are_exactly_what_the_one_delivery_functions_write(
    new_session: SessionFactory, schema: str
) -> None:
    params = {"count": 120, "version": "4.2"}
    with new_session(expire_on_commit=False) as session:
        set_preferences(session, 120)
        reference = plan_per_row(session, ReleaseNotes(), params, schema)
        session.commit()
        result = trigger(
            session,
            ReleaseNotes(),
            params,
            idempotency_key="v4.2",
            correlation_id="req-7",
            queue_schema=schema,
        )
        session.commit()

        expected, actual = planned_rows(session, reference), planned_rows(session, result.event.id)
        assert actual == expected
        reasons = {row["reason"] for row in actual.values()}
        assert reasons == {None, "channel_disabled", "category_disabled"}
        jobs = jobs_by_delivery(session, schema)
        pending = session.scalars(select(Delivery).where(Delivery.status == "pending")).all()
        assert sorted(jobs) == sorted(str(d.id) for d in pending)
    fields = {(j.worker, j.queue, j.state, j.max_attempts, j.priority, j.attempt) for j in jobs.values()}
    assert len(fields) == 1


@pytest.mark.slow
def test_a_fan_out_to_thousands_suppresses_exactly_as_the_preference_functions_decide(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        set_preferences(session, 3000)
        result = trigger(
            session,
            ReleaseNotes(),
            {"count": 3000, "version": "5"},
            idempotency_key="v5",
            queue_schema=schema,
        )
        session.commit()

        rows = planned_rows(session, result.event.id)
        assert len(rows) == len(result.delivery_ids) == 6600
        planning = {"notification_key": KEY, "policy_checkpoint": "planning"}
        for (who, channel), row in rows.items():
            expected: tuple[str, str | None, dict[str, str]] = ("pending", None, {"notification_key": KEY})
            if not preferences.channel_enabled(session, who, KEY, channel):
                expected = ("suppressed", "channel_disabled", planning)
            elif not preferences.category_enabled(session, who, CATEGORY):
                expected = ("suppressed", "category_disabled", planning)
            assert (row["status"], row["reason"], row["metadata"]) == expected, (who, channel)
        suppressed = session.scalars(select(Delivery.id).where(Delivery.status == "suppressed")).all()
    assert sorted(result.suppressed) == sorted(suppressed)
    assert len(result.job_ids) == 6600 - len(suppressed)


def test_jobs_go_to_pending_deliveries_only_and_are_unique_per_delivery(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        set_preferences(session, 400)
        result = trigger(
            session, ReleaseNotes(), {"count": 400, "version": "6"}, idempotency_key="v6", queue_schema=schema
        )
        session.commit()
        jobs = jobs_by_delivery(session, schema)
        assert sorted(j.id for j in jobs.values()) == sorted(result.job_ids)
        assert set(jobs) == {str(d) for d in result.delivery_ids if d not in result.suppressed}
        for job in jobs.values():
            assert (job.worker, job.queue, job.state) == (
                DispatchWorker.name,
                "chimeway_delivery",
                "available",
            )

        # The unique key is the one pgqueue computes: enqueuing a planned delivery again is a no-op.
        some = next(d for d in result.delivery_ids if d not in result.suppressed)
        again = enqueue_in(session, some, schema=schema)
        session.commit()
        assert again.conflict
        assert again.id == jobs[str(some)].id
        assert len(pgqueue.all_jobs(session, schema=schema)) == len(jobs)


def test_the_ids_in_the_result_are_the_rows_in_recipient_then_channel_order(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        result = trigger(
            session, ReleaseNotes(), {"count": 12, "version": "7"}, idempotency_key="v7", queue_schema=schema
        )
        session.commit()
        notifications = {n.id: n for n in session.scalars(select(Notification))}
        by_id = {d.id: d for d in session.scalars(select(Delivery))}
    identities = sorted(f"user:{i}" for i in range(12))
    assert [r.identity for r in result.recipients] == identities
    assert [notifications[n].recipient_identity for n in result.notification_ids] == identities
    order = [
        (notifications[by_id[d].notification_id].recipient_identity, by_id[d].channel)
        for d in result.delivery_ids
    ]
    assert order == sorted(order)
    assert list(result.notification_ids) == sorted(result.notification_ids)  # time-ordered ids


class Announcement(Notifier):
    """No category of its own: the params' "category" key decides."""

    notification_key = "announcement"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return ["user:1", "user:2"]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["in_app"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": "hello"}


@pytest.mark.parametrize(
    ("notifier", "params", "stored"),
    [
        (ReleaseNotes(), {"count": 2, "version": "8"}, CATEGORY),
        (Announcement(), {"category": "  billing "}, "billing"),
        (Announcement(), {"category": "   "}, None),
        (Announcement(), {"category": 7}, None),
        (Announcement(), {}, None),
    ],
)
def test_each_notification_carries_the_category_the_inbox_filters_on(
    new_session: SessionFactory, schema: str, notifier: Notifier, params: dict[str, Any], stored: str | None
) -> None:
    with new_session() as session:
        result = trigger(session, notifier, params, idempotency_key="cat", queue_schema=schema)
        session.commit()
        rows = session.execute(select(Notification.id, Notification.category)).all()
        page = inbox.list_for_recipient(session, "user:1", category=stored) if stored else None
    assert {category for _, category in rows} == {stored}
    assert len(rows) == len(result.notification_ids) == 2
    if page is not None:
        assert [item.category for item in page.items] == [stored]


def test_a_rolled_back_fan_out_leaves_no_row_no_job_and_wakes_no_queue(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema, "insert"))))
        with new_session(expire_on_commit=False) as session:
            result = trigger(
                session,
                ReleaseNotes(),
                {"count": 2000, "version": "8"},
                idempotency_key="v8",
                queue_schema=schema,
            )
            assert len(result.job_ids) == 4400
            session.rollback()
            tables = (Event, Notification, Delivery)
            assert [count(session, table) for table in tables] == [0, 0, 0]
            assert pgqueue.all_jobs(session, schema=schema) == []
        assert list(listener.notifies(timeout=0.3)) == []


def test_a_repeated_key_creates_nothing_after_a_large_fan_out(
    new_session: SessionFactory, schema: str
) -> None:
    params = {"count": 1500, "version": "9"}
    with new_session(expire_on_commit=False) as session:
        first = trigger(session, ReleaseNotes(), params, idempotency_key="v9", queue_schema=schema)
        session.commit()
        second = trigger(session, ReleaseNotes(), params, idempotency_key="v9", queue_schema=schema)
        session.commit()
        assert (second.duplicate, second.event.id) == (True, first.event.id)
        assert (second.notification_ids, second.delivery_ids, second.job_ids) == ((), (), ())
        assert (count(session, Notification), count(session, Delivery)) == (1500, 3300)
        assert len(jobs_by_delivery(session, schema)) == 3300


def test_two_racing_fan_outs_with_one_key_plan_once(new_session: SessionFactory, schema: str) -> None:
    barrier = threading.Barrier(2)
    results: list[TriggerResult] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            with new_session(expire_on_commit=False) as session:
                session.execute(select(1))
                barrier.wait(10)
                params = {"count": 2000, "version": "10"}
                results.append(
                    trigger(session, ReleaseNotes(), params, idempotency_key="v10", queue_schema=schema)
                )
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(r.duplicate for r in results) == [False, True]
    with new_session() as session:
        assert [count(session, t) for t in (Event, Notification, Delivery)] == [1, 2000, 4400]
        assert len(jobs_by_delivery(session, schema)) == 4400


@pytest.fixture
def counting_engine(sqlalchemy_url: str, schema: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url, connect_args={"cursor_factory": CountingCursor})
    yield engine.execution_options(schema_translate_map={None: schema})
    engine.dispose()


@pytest.mark.parametrize("recipients", [1, 10, 1000])
def test_a_fan_out_takes_the_same_statements_whatever_the_number_of_recipients(
    counting_engine: Engine, schema: str, recipients: int
) -> None:
    with Session(counting_engine) as session:
        session.execute(select(1))
        CountingCursor.reset()
        trigger(
            session,
            ReleaseNotes(),
            {"count": recipients, "version": "11"},
            idempotency_key="v11",
            queue_schema=schema,
        )
        # the event, suppression, reserving job ids; the notifications', deliveries' and jobs' COPY
        # (and a SAVEPOINT with its RELEASE around the first COPY, which bypass cursors)
        assert (CountingCursor.executes, CountingCursor.copies) == (3, 3)
        session.commit()


def test_an_unmapped_session_writes_where_its_search_path_finds_the_tables(
    sqlalchemy_url: str, schema: str
) -> None:
    engine = create_engine(sqlalchemy_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        with Session(engine) as session:
            result = trigger(
                session,
                ReleaseNotes(),
                {"count": 3, "version": "12"},
                idempotency_key="v12",
                queue_schema=schema,
            )
            session.commit()
            assert count(session, Delivery) == len(result.delivery_ids) == 7
    finally:
        engine.dispose()


@pytest.mark.anyio
async def test_atrigger_fans_out_in_an_async_session_and_rolls_back_with_it(
    sa_async_session: AsyncSession, schema: str
) -> None:
    params = {"count": 600, "version": "13"}
    kept = await atrigger(
        sa_async_session, ReleaseNotes(), params, idempotency_key="v13", queue_schema=schema
    )
    kept_event = kept.event.id
    await sa_async_session.commit()
    again = await atrigger(
        sa_async_session, ReleaseNotes(), params, idempotency_key="v13", queue_schema=schema
    )
    assert (again.duplicate, again.event.id) == (True, kept_event)
    gone = await atrigger(
        sa_async_session, ReleaseNotes(), params, idempotency_key="v14", queue_schema=schema
    )
    assert len(gone.delivery_ids) == 1320
    await sa_async_session.rollback()

    deliveries_left = await sa_async_session.scalar(select(func.count()).select_from(Delivery))
    jobs = await pgqueue.aall_jobs(sa_async_session, schema=schema, limit=100_000)
    assert deliveries_left == len(kept.delivery_ids) == 1320
    assert sorted(j.id for j in jobs) == sorted(kept.job_ids)
    assert {j.args["delivery_id"] for j in jobs} == {str(d) for d in kept.delivery_ids}


@pytest.fixture
def insert_only_role(dsn: str, schema: str) -> Iterator[str]:
    """A role that may insert chimeway's rows and jobs but not take ids from the jobs sequence."""
    role = f"cw_fanout_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        ident = sql.Identifier(role)
        admin.execute(sql.SQL("CREATE ROLE {}").format(ident))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), ident
            )
        )
        try:
            yield role
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            admin.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_a_role_that_cannot_copy_jobs_gets_them_inserted_one_statement_instead(
    new_session: SessionFactory, schema: str, insert_only_role: str
) -> None:
    with new_session(expire_on_commit=False) as session:
        # LOCAL: the pooled connection goes back to the suite's role at commit
        role = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(insert_only_role)).as_string(None)
        session.connection().exec_driver_sql(role)
        result = trigger(
            session,
            ReleaseNotes(),
            {"count": 300, "version": "15"},
            idempotency_key="v15",
            queue_schema=schema,
        )
        session.commit()
        jobs = jobs_by_delivery(session, schema)
    assert len(jobs) == len(result.job_ids) == 660
    assert sorted(j.id for j in jobs.values()) == sorted(result.job_ids)
    assert all(
        bytes(key) == dispatch_job(uuid.UUID(d)).unique_key
        for d, key in unique_keys(new_session, schema).items()
    )


def unique_keys(new_session: SessionFactory, schema: str) -> dict[str, bytes]:
    with new_session() as session:
        conn = session.connection().connection.driver_connection
        assert conn is not None
        rows = conn.execute(
            sql.SQL("SELECT args ->> 'delivery_id', unique_key FROM {}").format(
                sql.Identifier(schema, "jobs")
            )
        ).fetchall()
    return {str(delivery): bytes(key) for delivery, key in rows}


def test_copied_jobs_carry_the_unique_key_pgqueue_computes(new_session: SessionFactory, schema: str) -> None:
    with new_session() as session:
        trigger(
            session,
            ReleaseNotes(),
            {"count": 50, "version": "16"},
            idempotency_key="v16",
            queue_schema=schema,
        )
        session.commit()
    keys = unique_keys(new_session, schema)
    assert len(keys) == 110
    for delivery, key in keys.items():
        assert key == dispatch_job(uuid.UUID(delivery)).unique_key
