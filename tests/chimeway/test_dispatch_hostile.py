"""Bad input in a batch: each delivery fails by its own class, the rest of the batch goes on.

Deleted rows, malformed ids, adapters that raise, hang or return garbage, and provider answers
PostgreSQL refuses: every one ends explained (or its job cancelled), nothing is lost or recorded
twice, and the deliveries batched with it succeed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from chimeway.adapters import Delivered
from chimeway.dispatch import ChannelRoute, Dispatcher, DispatchWorker, UnhandledOutcomeError, records
from chimeway.models import Delivery, DeliveryAttempt
from chimeway.store import queries_for
from pgqueue.testing import build_job

from .conftest import MakeDelivery, SessionFactory

pytestmark = pytest.mark.anyio


class Instant:
    name = "instant"

    async def deliver(self, delivery: Any, config: Any) -> Delivered:
        return Delivered({"provider_message_id": f"m-{delivery.attempt_number}"})


class Raises:
    name = "raises"

    def deliver(self, delivery: Any, config: Any) -> Delivered:
        raise ConnectionResetError("peer reset")


class HangsAsync:
    name = "hangs-async"

    async def deliver(self, delivery: Any, config: Any) -> Delivered:
        await asyncio.sleep(30)
        return Delivered({})


class HangsSync:
    name = "hangs-sync"

    def deliver(self, delivery: Any, config: Any) -> Delivered:
        time.sleep(1.5)  # a thread can't be interrupted: the dispatcher stops waiting for it
        return Delivered({})


class Garbage:
    name = "garbage"

    async def deliver(self, delivery: Any, config: Any) -> Any:
        return {"status": "maybe"}


class DeletesItsDelivery:
    """Deletes the delivery it is sending (an operator purging it mid-batch)."""

    name = "deletes"

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema

    def deliver(self, delivery: Any, config: Any) -> Delivered:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(
                    sql.Identifier(self.schema, "chimeway_deliveries")
                ),
                (delivery.delivery_id,),
            )
        return Delivered({})


def job(delivery_id: Any, attempt: int = 1) -> pgqueue.Job:
    new = DispatchWorker.new({"delivery_id": str(uuid.uuid4())})
    built = build_job(DispatchWorker, new, attempt=attempt)
    return built._replace(args={"delivery_id": delivery_id})


def rows(new_session: SessionFactory, delivery_id: uuid.UUID) -> tuple[Any, list[tuple[Any, ...]]]:
    with new_session() as session:
        delivery = session.get(Delivery, delivery_id)
        attempts = (
            session.query(
                DeliveryAttempt.attempt_number,
                DeliveryAttempt.outcome,
                DeliveryAttempt.error_class,
                DeliveryAttempt.provider_response,
            )
            .filter(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
            .all()
        )
        status = None if delivery is None else (delivery.status, delivery.suppression_reason)
        return status, [tuple(a) for a in attempts]


async def test_each_bad_delivery_fails_by_its_class_and_the_rest_of_the_batch_succeeds(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    routes = {
        "ok": ChannelRoute(Instant()),
        "raises": ChannelRoute(Raises()),
        "hangs_async": ChannelRoute(HangsAsync(), timeout=0.3),
        "hangs_sync": ChannelRoute(HangsSync(), timeout=0.3),
        "garbage": ChannelRoute(Garbage()),
        "deleted": ChannelRoute(DeletesItsDelivery(dsn, schema)),
    }
    ids = {channel: make_delivery(channel=channel) for channel in routes}
    good = [make_delivery(channel="ok") for _ in range(20)]
    missing = uuid.uuid4()
    odd = make_delivery(channel="ok")  # a valid UUID in spellings PostgreSQL or an array literal refuse
    spelled = [f"{{{odd}}}", str(odd).replace("-", "")[:5] + "-" + str(odd).replace("-", "")[5:]]
    jobs = [job(str(i)) for i in [*ids.values(), *good, missing]] + [job("not-a-uuid"), job(42)]
    jobs += [job(text) for text in spelled]
    dispatcher = Dispatcher(dsn, schema=schema, routes=routes)

    started = time.monotonic()
    async with dispatcher:
        results = await asyncio.gather(*(dispatcher.perform(j) for j in jobs), return_exceptions=True)
    took = time.monotonic() - started

    by_channel = dict(zip(ids, results, strict=False))
    assert isinstance(by_channel["raises"], pgqueue.Error)
    assert "exception=ConnectionResetError" in str(by_channel["raises"])
    for hung in ("hangs_async", "hangs_sync"):
        assert isinstance(by_channel[hung], pgqueue.Error)
        assert "error=timeout" in str(by_channel[hung])
    assert isinstance(by_channel["garbage"], UnhandledOutcomeError)
    assert isinstance(by_channel["deleted"], pgqueue.Cancel)
    assert f"delivery {ids['deleted']} not found" in str(by_channel["deleted"])
    assert results[len(ids) : len(ids) + len(good)] == [None] * len(good)
    *_, on_missing, on_malformed, on_number, braced, hyphened = results
    assert (braced, hyphened) == (None, None)
    assert rows(new_session, odd)[0] == ("succeeded", None)
    assert isinstance(on_missing, pgqueue.Cancel)
    assert "not found" in str(on_missing)
    assert isinstance(on_malformed, pgqueue.Cancel)
    assert "malformed delivery_id" in str(on_malformed)
    assert isinstance(on_number, pgqueue.Cancel)
    assert took < 10, "a hung adapter holds only its own delivery, and only until its deadline"

    assert rows(new_session, ids["raises"]) == (
        ("failed", None),
        [(1, "failed", "temporary", {"exception": "ConnectionResetError"})],
    )
    for hung in ("hangs_async", "hangs_sync"):
        assert rows(new_session, ids[hung]) == (
            ("failed", None),
            [(1, "failed", "temporary", {"error": "timeout", "timeout": 0.3})],
        )
    assert rows(new_session, ids["garbage"]) == (
        ("failed", None),
        [(1, "rejected", "unknown_classification", {})],
    )
    assert rows(new_session, ids["deleted"]) == (None, [])
    for delivery_id in good:
        assert rows(new_session, delivery_id) == (
            ("succeeded", None),
            [(1, "succeeded", None, {"provider_message_id": "m-1"})],
        )


async def test_garbage_on_the_final_attempt_is_exhausted_and_completes_the_job(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery(channel="garbage")
    dispatcher = Dispatcher(dsn, schema=schema, routes={"garbage": ChannelRoute(Garbage())})

    assert await dispatcher.perform(job(str(delivery_id), attempt=5)) is None

    assert rows(new_session, delivery_id) == (
        ("cancelled", "retries_exhausted"),
        [(1, "rejected", "unknown_classification", {})],
    )


async def test_an_answer_postgresql_refuses_is_recorded_without_it_and_the_rest_land_whole(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Values classify() would have cleaned, handed to the record statement raw: the statement
    # fails, the batch is split, and each refused attempt is written in its minimal form.
    queries = queries_for(schema)
    good = [make_delivery("dispatched") for _ in range(5)]
    nul, long_id, surrogate = (make_delivery("dispatched") for _ in range(3))

    def item(delivery_id: uuid.UUID, response: dict[str, Any], message_id: str | None) -> records.RecordItem:
        return records.RecordItem(delivery_id, "succeeded", None, response, message_id, "test", False)

    items = [item(d, {"ok": True}, f"id-{d}") for d in good[:3]]
    items += [
        item(nul, {"note": "a\x00b"}, None),
        item(long_id, {}, "x" * 10_000),  # past what the message id's index can hold
        item(surrogate, {"note": "\udcff"}, None),
    ]
    items += [item(d, {"ok": True}, f"id-{d}") for d in good[3:]]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        results = await records.record(conn, queries, items)

    for delivery_id in good:
        result = results[delivery_id]
        assert isinstance(result, records.Recorded)
        assert not result.minimal
        assert rows(new_session, delivery_id) == (("succeeded", None), [(1, "succeeded", None, {"ok": True})])
    for delivery_id in (nul, long_id, surrogate):
        result = results[delivery_id]
        assert isinstance(result, records.Recorded)
        assert result.status == "succeeded"
        assert result.attempt_number == 1
        assert rows(new_session, delivery_id) == (("succeeded", None), [(1, "succeeded", None, {})])


async def test_a_delivery_sent_twice_in_one_batch_is_claimed_and_recorded_one_after_the_other(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    delivery_id = make_delivery(channel="ok")
    dispatcher = Dispatcher(dsn, schema=schema, routes={"ok": ChannelRoute(Instant())})

    async with dispatcher:
        results = await asyncio.gather(*(dispatcher.perform(job(str(delivery_id))) for _ in range(3)))

    assert results == [None, None, None]
    assert rows(new_session, delivery_id) == (
        ("succeeded", None),
        [(1, "succeeded", None, {"provider_message_id": "m-1"})],
    ), "the first run delivered it; the others found it ended"


async def test_a_job_cancelled_while_its_delivery_is_sent_still_leaves_the_attempt_recorded(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    class Slow:
        name = "slow"

        async def deliver(self, delivery: Any, config: Any) -> Delivered:
            await asyncio.sleep(0.3)
            return Delivered({})

    delivery_id = make_delivery(channel="slow")
    dispatcher = Dispatcher(dsn, schema=schema, routes={"slow": ChannelRoute(Slow())})

    async with dispatcher:
        task = asyncio.ensure_future(dispatcher.perform(job(str(delivery_id))))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # closing waited for the batch: the send the job no longer waited for is on record

    assert rows(new_session, delivery_id) == (("succeeded", None), [(1, "succeeded", None, {})])


async def test_closing_the_dispatcher_closes_its_pool_and_the_adapters_shared_clients(
    dsn: str, schema: str, make_delivery: MakeDelivery
) -> None:
    from chimeway.adapters import WebhookAdapter

    webhook = WebhookAdapter()
    dispatcher = Dispatcher(
        dsn, schema=schema, routes={"hook": ChannelRoute(webhook, {"url": "http://127.0.0.1:9"})}
    )
    loop = asyncio.get_running_loop()

    async with dispatcher:
        pool = dispatcher._pools[loop]
        assert loop in webhook._shared
        assert await dispatcher.perform(job(str(make_delivery(channel="ok")))) is None  # the default route

    assert pool.closed
    assert loop not in dispatcher._pools
    assert loop not in webhook._shared


async def test_content_written_too_deep_to_decode_ends_its_delivery_without_a_send(
    dsn: str, schema: str, make_delivery: MakeDelivery, new_session: SessionFactory
) -> None:
    # Another client wrote the notification's content nested deeper than a decoder follows: the
    # adapter can't be given it, so the delivery ends as a permanent failure that says why, and
    # the delivery batched with it is sent as usual.
    class Counting(Instant):
        calls = 0

        async def deliver(self, delivery: Any, config: Any) -> Delivered:
            Counting.calls += 1
            return await super().deliver(delivery, config)

    poisoned, fine = make_delivery(channel="ok"), make_delivery(channel="ok")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {n} SET metadata = jsonb_build_object('deep', %s::jsonb)"
                " WHERE id = (SELECT notification_id FROM {d} WHERE id = %s)"
            ).format(
                n=sql.Identifier(schema, "chimeway_notifications"),
                d=sql.Identifier(schema, "chimeway_deliveries"),
            ),
            ("[" * 3000 + "]" * 3000, poisoned),
        )
    dispatcher = Dispatcher(dsn, schema=schema, routes={"ok": ChannelRoute(Counting())})

    async with dispatcher:
        results = await asyncio.gather(
            dispatcher.perform(job(str(poisoned))), dispatcher.perform(job(str(fine)))
        )

    assert results == [None, None]
    assert Counting.calls == 1
    assert rows(new_session, poisoned) == (
        ("cancelled", "permanent_failure"),
        [(1, "rejected", "permanent", {"error": "undecodable_notification_metadata"})],
    )
    assert rows(new_session, fine)[0] == ("succeeded", None)
