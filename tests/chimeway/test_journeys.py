"""Multi-step journeys: definitions refused at once, runs that move through conditions, waits,
reads and signals, with every move in the transition log."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import chimeway
from chimeway import dispatch, inbox
from chimeway.adapters import Failed, TestAdapter
from chimeway.journeys import Journey, JourneyError, Step, asignal, signal
from chimeway.preferences import upsert_channel_preference
from chimeway.recovery import Recovery
from pgqueue.testing import drain_queue

from .conftest import SessionFactory
from .journey_fixtures import (
    drain,
    notifier,
    run_row,
    sql,
    step_deliveries,
    three_steps,
    transitions,
    trigger,
)
from .test_recovery import plugin_round

pytestmark = pytest.mark.usefixtures("journey_dispatcher")


# -- definitions ---------------------------------------------------------------------------------


def test_duplicate_step_orders_are_refused_at_definition() -> None:
    with pytest.raises(JourneyError, match=r"duplicate step order 2 \('a' and 'b'\)"):
        Journey("j", 1, [Step(1, "in_app"), Step(2, "email", key="a"), Step(2, "sms", key="b")])


def test_a_cycle_of_after_links_is_refused_with_its_path() -> None:
    with pytest.raises(JourneyError, match="form a cycle: a -> b -> a"):
        Journey("j", 1, [Step(1, "email", key="a", after="b"), Step(2, "sms", key="b", after="a")])


def test_after_must_name_an_earlier_step() -> None:
    with pytest.raises(JourneyError, match="after must name an earlier step"):
        Journey("j", 1, [Step(1, "email", key="a", after="b"), Step(2, "sms", key="b")])
    with pytest.raises(JourneyError, match="after names no step: 'zz'"):
        Journey("j", 1, [Step(1, "email", key="a"), Step(2, "sms", key="b", after="zz")])


def test_an_unknown_channel_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(JourneyError, match=r"step 1: unknown channel 'emial'; known channels: \["):
        Journey("j", 1, [Step(1, "emial")])
    assert Journey("j", 1, [Step(1, "fax")], channels=["fax"]).ordered[0].channel == "fax"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "steps must be a non-empty list"),
        ([Step(0, "email")], "order must be an integer >= 1"),
        ([Step(1, "email", delay=-1)], "delay must be a number of seconds"),
        ([Step(1, "email", when=["sent"])], r"unknown outcome\(s\) \['sent'\]"),
        ([Step(1, "email", when="delivered")], "when must be a list"),  # type: ignore[arg-type]
        ([Step(1, "email"), Step(2, "email")], "uses channel 'email' like step 1"),
        ([Step(1, "email", template=("t", 0))], r"template must be \(key, version >= 1\)"),
    ],
)
def test_bad_steps_are_refused_with_the_field_named(steps: list[Step], message: str) -> None:
    with pytest.raises(JourneyError, match=message):
        Journey("j", 1, steps)


def test_a_changed_definition_under_the_same_version_is_refused(new_session: SessionFactory) -> None:
    with new_session() as session:
        trigger(session, notifier(three_steps()), ["user:1"])
    changed = Journey("onboarding", 1, [Step(1, "in_app"), Step(2, "sms", delay=60)])
    with (
        new_session() as session,
        pytest.raises(JourneyError, match="give the changed journey a new version"),
    ):
        trigger(session, notifier(changed), ["user:2"])


# -- runs ----------------------------------------------------------------------------------------


def test_a_three_step_journey_skips_the_step_whose_condition_fails(
    new_session: SessionFactory, dsn: str, schema: str, test_adapter: TestAdapter
) -> None:
    with new_session() as session:
        result = trigger(session, notifier(three_steps()), ["user:1"])
    assert result.delivery_ids == ()  # the run plans each step, the trigger none
    (run_id,) = result.run_ids
    drain(dsn, schema)
    with new_session() as session:
        assert run_row(session, run_id) == (
            "completed",
            3,
            {"1": "delivered", "2": "skipped", "3": "delivered"},
            "completed",
        )
        assert step_deliveries(session, run_id) == [
            (1, "in_app", "succeeded", None),
            (3, "sms", "succeeded", None),
        ]
        assert [t[3] for t in transitions(session, run_id)] == [
            "started",
            "step_emitted",
            "step_settled",
            "waiting",
            "step_skipped",
            "waiting",
            "step_emitted",
            "step_settled",
            "completed",
        ]
    assert [c.delivery.channel for c in test_adapter.calls()] == ["in_app", "sms"]


def test_a_bounce_takes_the_branch_that_asks_for_it(
    new_session: SessionFactory, dsn: str, schema: str, test_adapter: TestAdapter
) -> None:
    journey = Journey("fallback", 1, [Step(1, "email"), Step(2, "sms", when=["bounced"])])
    test_adapter.script(Failed("bounced", {"status_code": 410}))
    with new_session() as session:
        (run_id,) = trigger(session, notifier(journey, "fallback"), ["user:1"]).run_ids
    drain(dsn, schema)
    with new_session() as session:
        assert run_row(session, run_id)[:3] == ("completed", 2, {"1": "bounced", "2": "delivered"})
        assert step_deliveries(session, run_id) == [
            (1, "email", "cancelled", "bounced"),
            (2, "sms", "succeeded", None),
        ]


def test_a_temporary_failure_fires_early_while_the_step_still_retries(
    new_session: SessionFactory, dsn: str, schema: str, test_adapter: TestAdapter
) -> None:
    journey = Journey("early", 1, [Step(1, "email"), Step(2, "sms", when=["temporary_failure"])])
    test_adapter.script(Failed("temporary", {"status_code": 503}))
    with new_session() as session:
        (run_id,) = trigger(session, notifier(journey, "early"), ["user:1"]).run_ids
    drain(dsn, schema)  # the email's retry is scheduled, not drained
    with new_session() as session:
        assert run_row(session, run_id)[:3] == ("completed", 2, {"1": "temporary_failure", "2": "delivered"})
        assert step_deliveries(session, run_id) == [
            (1, "email", "failed", None),
            (2, "sms", "succeeded", None),
        ]


def test_a_suppressed_step_settles_at_once_and_the_next_step_sees_it(
    new_session: SessionFactory, dsn: str, schema: str
) -> None:
    with new_session() as session:
        upsert_channel_preference(session, "user:1", "prefs", "email", enabled=False)
        session.commit()
    journey = Journey("prefs", 1, [Step(1, "email"), Step(2, "sms", when=["suppressed"])])
    with new_session() as session:
        (run_id,) = trigger(session, notifier(journey, "prefs"), ["user:1"]).run_ids
    drain(dsn, schema)
    with new_session() as session:
        assert step_deliveries(session, run_id) == [
            (1, "email", "suppressed", "channel_disabled"),
            (2, "sms", "succeeded", None),
        ]
        assert run_row(session, run_id)[:3] == ("completed", 2, {"1": "suppressed", "2": "delivered"})


def test_a_step_waits_on_a_scheduled_job_then_a_read_notification_stops_the_run(
    new_session: SessionFactory, dsn: str, schema: str
) -> None:
    journey = Journey("wait", 1, [Step(1, "in_app"), Step(2, "email", delay=3600)], advance_on=["poke"])
    with new_session() as session:
        result = trigger(session, notifier(journey, "wait"), ["user:1"])
    (run_id,) = result.run_ids
    drain(dsn, schema)
    with new_session() as session:
        assert run_row(session, run_id)[:2] == ("waiting", 2)
        # the wait is a scheduled job of the queue, an hour out
        (due,) = session.execute(
            sql(
                session,
                "SELECT extract(epoch FROM scheduled_at - now()) FROM {s}.jobs WHERE state = 'scheduled'",
            )
        ).one()
        assert 3500 < due <= 3600
        inbox.mark_read(session, "user:1", result.notification_ids[0])
        session.commit()
        assert signal(session, "user:1", "poke", queue_schema=schema).advanced == [run_id]
        session.commit()
    drain(dsn, schema)
    with new_session() as session:
        assert run_row(session, run_id) == ("ended", 2, {"1": "delivered"}, "read")
        assert step_deliveries(session, run_id) == [(1, "in_app", "succeeded", None)]
        assert transitions(session, run_id)[-2:] == [
            (2, "waiting", "waiting", "signal_advanced"),
            (2, "waiting", "ended", "read"),
        ]


def test_a_signal_ends_a_waiting_run_and_its_scheduled_step_does_nothing(
    new_session: SessionFactory, dsn: str, schema: str, test_adapter: TestAdapter
) -> None:
    journey = Journey(
        "login", 1, [Step(1, "in_app"), Step(2, "email", delay=3600)], end_on=["user_logged_in"]
    )
    with new_session() as session:
        (run_id,) = trigger(session, notifier(journey, "login"), ["user:1"]).run_ids
        (other,) = trigger(session, notifier(journey, "login"), ["user:2"]).run_ids
    drain(dsn, schema)
    with new_session() as session:
        result = signal(session, "user:1", "user_logged_in", queue_schema=schema)
        session.commit()
    assert (result.ended, result.advanced) == ([run_id], [])
    # the scheduled step jobs run now: the ended run's finds nothing to do, the other is snoozed
    drained = drain_queue(dsn, "chimeway_delivery", schema=schema, with_scheduled=True, with_limit=2)
    assert (drained.success, drained.snoozed) == (1, 1)
    with new_session() as session:
        assert run_row(session, run_id) == ("ended", 2, {"1": "delivered"}, "signal")
        assert step_deliveries(session, run_id) == [(1, "in_app", "succeeded", None)]
        assert run_row(session, other)[0] == "waiting"  # another recipient's run is untouched
    assert len(test_adapter.calls()) == 2


def test_many_recipients_each_get_their_own_run_and_each_step_once(
    new_session: SessionFactory, dsn: str, schema: str, test_adapter: TestAdapter
) -> None:
    users = [f"user:{i}" for i in range(30)]
    with new_session() as session:
        result = trigger(session, notifier(three_steps()), users)
    drain(dsn, schema)
    with new_session() as session:
        counts = session.execute(
            sql(session, "SELECT state, count(*) FROM {s}.chimeway_journey_runs GROUP BY state")
        ).all()
        assert dict(counts) == {"completed": 30}
        (per_channel,) = session.execute(
            sql(
                session,
                "SELECT count(DISTINCT (notification_id, channel)) = count(*) FROM {s}.chimeway_deliveries",
            )
        ).one()
        assert per_channel
    assert len(result.run_ids) == 30
    assert len(test_adapter.calls()) == 60


def test_the_async_trigger_and_signal_twins(
    sqlalchemy_url: str, schema: str, dsn: str, new_session: SessionFactory
) -> None:
    journey = Journey("twins", 1, [Step(1, "in_app"), Step(2, "email", delay=3600)], end_on=["stop"])

    async def go() -> tuple[uuid.UUID, list[uuid.UUID]]:
        engine = create_async_engine(sqlalchemy_url).execution_options(schema_translate_map={None: schema})
        try:
            async with AsyncSession(engine) as session:
                result = await chimeway.atrigger(
                    session,
                    notifier(journey, "twins"),
                    {"users": ["user:1"]},
                    idempotency_key="k",
                    queue_schema=schema,
                )
                await session.commit()
                ended = await asignal(session, "user:1", "stop", queue_schema=schema)
                await session.commit()
                return result.run_ids[0], list(ended.ended)
        finally:
            await engine.dispose()

    run_id, ended = asyncio.run(go())
    assert ended == [run_id]
    with new_session() as session:
        assert run_row(session, run_id)[0] == "ended"


def test_signals_refuse_blank_names(new_session: SessionFactory) -> None:
    with new_session() as session, pytest.raises(JourneyError, match="event must be a non-blank string"):
        signal(session, "user:1", " ")


def test_a_trigger_refuses_an_unusable_wait_until_before_writing(new_session: SessionFactory) -> None:
    journey = Journey("at", 1, [Step(1, "email", wait_until="send_at")])
    with new_session() as session, pytest.raises(JourneyError, match=r"params\['send_at'\].*got 'soon'"):
        trigger(session, notifier(journey, "at"), ["user:1"], send_at="soon")


def test_a_stuck_journey_delivery_is_recovered_by_the_journey_dispatch_job_and_the_run_goes_on(
    new_session: SessionFactory, dsn: str, schema: str
) -> None:
    journey = Journey("stuck", 1, [Step(1, "email"), Step(2, "sms")])
    with new_session() as session:
        (run_id,) = trigger(session, notifier(journey, "stuck"), ["user:1"]).run_ids
    drain_queue(dsn, dispatch.QUEUE, schema=schema, with_limit=1)  # the first step is planned
    # its worker died after the claim, and its job is gone: the delivery is stuck in dispatched
    with new_session() as session:
        session.execute(
            sql(
                session,
                "UPDATE {s}.chimeway_deliveries "
                "SET status = 'dispatched', updated_at = now() - interval '1 hour'",
            )
        )
        session.execute(
            sql(session, "DELETE FROM {s}.jobs WHERE worker = 'chimeway.journeys.JourneyDispatchWorker'")
        )
        session.commit()
    assert plugin_round(dsn, schema, Recovery(stuck_after=1))["recovered_count"] == 1
    with new_session() as session:
        (worker,) = session.execute(
            sql(session, "SELECT worker FROM {s}.jobs WHERE state = 'available'")
        ).one()
    assert worker == "chimeway.journeys.JourneyDispatchWorker"
    drain(dsn, schema)
    with new_session() as session:
        assert run_row(session, run_id)[:3] == ("completed", 2, {"1": "delivered", "2": "delivered"})
