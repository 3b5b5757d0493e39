"""Journey moves made in batches: many runs per transaction, each run moved as it would be alone,
and a run that cannot be moved failing alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

import pgqueue
from chimeway import inbox
from chimeway.dispatch import Dispatcher
from chimeway.journeys import Journey, Step
from chimeway.journeys.moves import advance_many
from chimeway.journeys.workers import factories, mover_for
from chimeway.preferences import upsert_channel_preference
from chimeway.store import queries_for

from .conftest import SessionFactory
from .journey_fixtures import drain, notifier, run_row, sql, step_deliveries, transitions, trigger

pytestmark = pytest.mark.usefixtures("journey_dispatcher")

JOURNEY = Journey(
    "batch", 1, [Step(1, "email"), Step(2, "sms", when=["suppressed"]), Step(3, "push", delay=3600)]
)


def _advance_many(dsn: str, schema: str, requests: list[tuple[uuid.UUID, int]]) -> list[Any]:
    async def go() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await advance_many(
                conn, queries_for(schema), requests, queue_schema=schema, jobs=factories()
            )

    return asyncio.run(go())


def _writers(session: Any, run_ids: Sequence[uuid.UUID]) -> int:
    """How many transactions wrote these runs' moves (``started`` is the trigger's)."""
    (count,) = session.execute(
        sql(
            session,
            "SELECT count(DISTINCT xmin::text) FROM {s}.chimeway_journey_transitions "
            "WHERE reason <> 'started' AND run_id = ANY (:ids)",
        ),
        {"ids": list(run_ids)},
    ).one()
    return int(count)


def test_one_batch_moves_each_run_its_own_way_in_one_transaction(
    new_session: SessionFactory, dsn: str, schema: str
) -> None:
    with new_session() as session:
        upsert_channel_preference(session, "user:b", "batch", "email", enabled=False)
        session.commit()
        result = trigger(session, notifier(JOURNEY, "batch"), ["user:a", "user:b", "user:c"])
        inbox.mark_read(session, "user:c", result.notification_ids[2])
        session.commit()
    a, b, c = result.run_ids
    unknown = uuid.uuid4()
    # a's step twice (a job re-run after a crash, say), and a run that does not exist
    results = _advance_many(dsn, schema, [(a, 1), (b, 1), (c, 1), (a, 1), (unknown, 1)])
    assert results[:4] == [None, None, None, None]
    assert isinstance(results[4], pgqueue.Cancel)
    with new_session() as session:
        # a: its email is out; the second request found the move made
        assert run_row(session, a) == ("sending", 1, {}, None)
        assert step_deliveries(session, a) == [(1, "email", "pending", None)]
        assert [t[3] for t in transitions(session, a)] == ["started", "step_emitted"]
        # b: email suppressed at planning, so the sms that asks for it went in the same batch
        assert run_row(session, b) == ("sending", 2, {"1": "suppressed"}, None)
        assert step_deliveries(session, b) == [
            (1, "email", "suppressed", "channel_disabled"),
            (2, "sms", "pending", None),
        ]
        assert transitions(session, b) == [
            (1, None, "waiting", "started"),
            (1, "waiting", "sending", "step_emitted"),
            (1, "sending", "waiting", "step_settled"),
            (2, "waiting", "waiting", "waiting"),
            (2, "waiting", "sending", "step_emitted"),
        ]
        # c: read before its first step
        assert run_row(session, c) == ("ended", 1, {}, "read")
        assert step_deliveries(session, c) == []
        # every move of the batch was written by one transaction
        assert _writers(session, [a, b, c]) == 1
        jobs = session.execute(
            sql(
                session,
                "SELECT args->>'run_id', args->>'step' FROM {s}.jobs WHERE state = 'available'"
                " AND worker = 'chimeway.journeys.JourneyDispatchWorker'",
            )
        ).all()
        assert sorted(jobs) == sorted([(str(a), "1"), (str(b), "2")])
    drain(dsn, schema)
    with new_session() as session:
        # both go on to the third step's wait, as they would have alone
        assert run_row(session, a) == ("waiting", 3, {"1": "delivered", "2": "skipped"}, None)
        assert run_row(session, b) == ("waiting", 3, {"1": "suppressed", "2": "delivered"}, None)


def test_the_moves_asked_for_in_one_turn_share_a_batch_and_one_that_fails_fails_alone(
    new_session: SessionFactory, dsn: str, schema: str, journey_dispatcher: Dispatcher
) -> None:
    broken = Journey("broken", 1, [Step(1, "email"), Step(2, "sms")])
    with new_session() as session:
        good = trigger(session, notifier(JOURNEY, "batch"), [f"user:{i}" for i in range(4)]).run_ids
        (bad,) = trigger(session, notifier(broken, "broken"), ["user:9"]).run_ids
        # a definition no worker can read (written by hand, say)
        session.execute(
            sql(
                session,
                "UPDATE {s}.chimeway_journey_definitions SET steps = '[{\"order\": 1}]' "
                "WHERE journey_key = 'broken'",
            )
        )
        session.commit()

    async def move(run_ids: Sequence[uuid.UUID]) -> list[Any]:
        mover = mover_for(journey_dispatcher)
        return await asyncio.gather(*(mover.advance(r, 1) for r in run_ids), return_exceptions=True)

    # asked for in the same turn of the loop: one batch, one transaction
    assert asyncio.run(move(good[:2])) == [None, None]
    with new_session() as session:
        assert _writers(session, good[:2]) == 1
    # with the broken run: the batch fails, and is made again one run at a time
    *moved, failed = asyncio.run(move([*good[2:], bad]))
    assert moved == [None, None]
    assert isinstance(failed, KeyError)
    with new_session() as session:
        for run_id in good:
            assert run_row(session, run_id)[:2] == ("sending", 1)
        assert _writers(session, good[2:]) == 2
        assert run_row(session, bad)[:2] == ("waiting", 1)
        assert [t[3] for t in transitions(session, bad)] == ["started"]
