"""The notifier: delivery by topic over LISTEN/NOTIFY, resilience, the polling fallback, LocalNotifier."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pgqueue.errors import ConfigError
from pgqueue.lifecycle import Service
from pgqueue.notifier import (
    LocalNotifier,
    Notifier,
    NotifierStatus,
    Payload,
    PostgresNotifier,
    decode_payload,
    encode_payload,
)
from pgqueue.store import channel_name
from tests.helpers import await_until

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def running(*services: Service) -> AsyncIterator[None]:
    """Run ``services`` for the body of the block, then cancel them."""
    async with anyio.create_task_group() as tg:
        for service in services:
            tg.start_soon(service.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def pg_notify(aconn: psycopg.AsyncConnection[Any], channel: str, payload: str) -> None:
    """Send a raw notification, as any client of the database could."""
    await aconn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    await aconn.commit()


def notifier_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pgqueue.notifier"]


def recorder() -> tuple[list[Payload], Any]:
    received: list[Payload] = []
    return received, received.append


async def test_delivers_payloads_to_the_subscribers_of_their_topic_only(dsn: str, schema: str) -> None:
    notifier = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT)
    inserts, on_insert = recorder()
    signals, on_signal = recorder()
    notifier.subscribe("insert", on_insert)
    notifier.subscribe("signal", on_signal)

    async with running(notifier):
        assert await notifier.wait_ready(TIMEOUT) == "listening"
        await notifier.notify("insert", {"queue": "media"})
        # Sent after the insert: once it arrives, the insert would have arrived on the wrong topic too.
        await notifier.notify("signal", {"action": "pause", "queue": "*"})
        await await_until(lambda: signals, timeout=TIMEOUT)

    assert inserts == [{"queue": "media"}]
    assert signals == [{"action": "pause", "queue": "*"}]
    assert notifier.status == "stopped"


async def test_malformed_payloads_are_dropped_and_delivery_continues(
    dsn: str, schema: str, aconn: psycopg.AsyncConnection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgqueue.notifier")
    notifier = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT)
    received, on_insert = recorder()
    notifier.subscribe("insert", on_insert)
    channel = channel_name(schema, "insert")

    async with running(notifier):
        await notifier.wait_ready(TIMEOUT)
        for garbage in ("not json", "[1, 2]", '"a string"', "{truncated", ""):
            await pg_notify(aconn, channel, garbage)
        await pg_notify(aconn, channel, '{"queue": "after-garbage"}')
        await await_until(lambda: received, timeout=TIMEOUT)
        assert notifier.status == "listening"

    assert received == [{"queue": "after-garbage"}]
    dropped = [r for r in notifier_logs(caplog) if "malformed payload" in r.getMessage()]
    assert len(dropped) == 5
    assert [r.levelno for r in dropped] == [logging.WARNING] + [logging.DEBUG] * 4


async def test_a_failing_subscriber_does_not_stop_the_others(dsn: str, schema: str) -> None:
    notifier = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT)

    def broken(payload: Payload) -> None:
        raise RuntimeError("subscriber bug")

    received, on_insert = recorder()
    notifier.subscribe("insert", broken)
    notifier.subscribe("insert", on_insert)

    async with running(notifier):
        await notifier.wait_ready(TIMEOUT)
        await notifier.notify("insert", {"n": 1})
        await notifier.notify("insert", {"n": 2})
        await await_until(lambda: len(received) == 2, timeout=TIMEOUT)

    assert received == [{"n": 1}, {"n": 2}]


async def test_reconnects_after_its_backend_is_terminated_and_delivers_again(
    dsn: str, schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    notifier = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT, min_delay=0.05, max_delay=0.5)
    statuses: list[NotifierStatus] = []
    notifier.on_status(statuses.append)
    received, on_insert = recorder()
    notifier.subscribe("insert", on_insert)

    async with running(notifier):
        await notifier.wait_ready(TIMEOUT)
        first_pid = notifier.backend_pid
        assert first_pid is not None

        await aconn.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        await aconn.commit()
        await await_until(
            lambda: notifier.status == "listening" and notifier.backend_pid not in (None, first_pid),
            timeout=TIMEOUT,
        )
        await notifier.notify("insert", {"queue": "after-reconnect"})
        await await_until(lambda: received, timeout=TIMEOUT)

    assert received == [{"queue": "after-reconnect"}]
    assert statuses == ["connecting", "listening", "connecting", "listening", "stopped"]


async def test_two_schemas_do_not_hear_each_other(dsn: str, schema: str) -> None:
    here = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT)
    there = PostgresNotifier(dsn, f"{schema}_other", ping_timeout=TIMEOUT)
    heard_here, on_here = recorder()
    heard_there, on_there = recorder()
    here.subscribe("insert", on_here)
    there.subscribe("insert", on_there)

    async with running(here, there):
        await here.wait_ready(TIMEOUT)
        await there.wait_ready(TIMEOUT)
        await here.notify("insert", {"from": "here"})
        await await_until(lambda: heard_here, timeout=TIMEOUT)
        # Sent after: once it arrives, "here"'s message would have reached "there" too.
        await there.notify("insert", {"from": "there"})
        await await_until(lambda: heard_there, timeout=TIMEOUT)

    assert heard_here == [{"from": "here"}]
    assert heard_there == [{"from": "there"}]


async def test_subscriptions_made_while_running_listen_at_once_and_unsubscribing_stops_delivery(
    dsn: str, schema: str
) -> None:
    notifier = PostgresNotifier(dsn, schema, ping_timeout=TIMEOUT)
    received, on_insert = recorder()
    sentinel, on_sentinel = recorder()

    async with running(notifier):
        await notifier.wait_ready(TIMEOUT)
        unsubscribe = notifier.subscribe("insert", on_insert)
        notifier.subscribe("sentinel", on_sentinel)

        async def sent_and_heard() -> bool:
            # LISTEN runs on the notifier's own loop a moment later; messages before it are lost.
            await notifier.notify("insert", {"n": 1})
            return bool(received)

        await await_until(sent_and_heard, timeout=TIMEOUT, interval=0.05)

        unsubscribe()
        unsubscribe()  # a second call is harmless
        await notifier.notify("insert", {"n": 2})
        await notifier.notify("sentinel", {"done": True})
        await await_until(lambda: sentinel, timeout=TIMEOUT)

    assert received
    assert all(payload == {"n": 1} for payload in received)


async def test_notify_through_a_pool(dsn: str, schema: str) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        notifier = PostgresNotifier(dsn, schema, pool=pool, ping_timeout=TIMEOUT)
        received, on_insert = recorder()
        notifier.subscribe("insert", on_insert)

        async with running(notifier):
            await notifier.wait_ready(TIMEOUT)
            await notifier.notify("insert", {"queue": "pooled"})
            await await_until(lambda: received, timeout=TIMEOUT)

    assert received == [{"queue": "pooled"}]


class PooledNotifier(PostgresNotifier):
    """LISTEN as behind a transaction-mode pooler: it runs on a session whose messages never reach us.

    While ``deaf``, each LISTEN goes to a side connection nobody reads, so the notifier's
    connection hears nothing, its ping included. ``pings`` counts the self-tests.
    """

    def __init__(self, dsn: str, schema: str, **options: Any) -> None:
        super().__init__(dsn, schema, **options)
        self.dsn = dsn
        self.deaf = True
        self.side: psycopg.AsyncConnection[Any] | None = None
        self.pings = 0

    async def _listen(self, conn: psycopg.AsyncConnection[Any], channel: str) -> None:
        if not self.deaf:
            return await super()._listen(conn, channel)
        if self.side is None:
            self.side = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await super()._listen(self.side, channel)

    async def _send_ping(self, token: str) -> None:
        self.pings += 1
        await super()._send_ping(token)


async def test_falls_back_to_polling_when_its_ping_never_arrives_then_recovers(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue.notifier")
    notifier = PooledNotifier(dsn, schema, ping_timeout=0.2, recheck_interval=0.1)
    statuses: list[NotifierStatus] = []
    notifier.on_status(statuses.append)
    received, on_insert = recorder()
    notifier.subscribe("insert", on_insert)

    try:
        async with running(notifier):
            assert await notifier.wait_ready(TIMEOUT) == "polling"
            # It keeps re-testing in the background; the switch is announced once, not per test.
            await await_until(lambda: notifier.pings >= 3, timeout=TIMEOUT)
            assert statuses == ["connecting", "polling"]

            notifier.deaf = False  # the pooler is gone: the next re-test LISTENs for real
            await await_until(lambda: notifier.status == "listening", timeout=TIMEOUT)
            await notifier.notify("insert", {"queue": "heard-again"})
            await await_until(lambda: received, timeout=TIMEOUT)
    finally:
        if notifier.side is not None:
            await notifier.side.close()

    assert statuses == ["connecting", "polling", "listening", "stopped"]
    assert received == [{"queue": "heard-again"}]
    fallbacks = [r for r in notifier_logs(caplog) if "Falling back to polling" in r.getMessage()]
    assert len(fallbacks) == 1
    assert fallbacks[0].levelno == logging.WARNING


async def test_wait_ready_times_out_while_the_database_is_unreachable_and_logs_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue.notifier")
    notifier = PostgresNotifier(
        "host=127.0.0.1 port=1 user=nobody password=hunter2 connect_timeout=2",
        "public",
        min_delay=0.05,
        max_delay=0.1,
    )

    async with running(notifier):
        with pytest.raises(TimeoutError):
            await notifier.wait_ready(0.3)
        assert notifier.status == "connecting"
        await await_until(lambda: len(notifier_logs(caplog)) >= 2, timeout=TIMEOUT)

    assert all("reconnecting in" in r.getMessage() for r in notifier_logs(caplog))
    assert "hunter2" not in caplog.text


def test_subscribers_must_be_plain_functions() -> None:
    async def handler(payload: Payload) -> None:
        return None

    for notifier in (LocalNotifier(), PostgresNotifier("dbname=x", "public")):
        with pytest.raises(ConfigError, match="must be plain functions"):
            notifier.subscribe("insert", handler)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="non-empty string"):
            notifier.subscribe("", print)


def test_payloads_must_be_json_objects_that_fit_in_a_notification() -> None:
    assert encode_payload("insert", {"queue": "média"}) == '{"queue":"média"}'
    with pytest.raises(ConfigError, match="must be a dict, got list"):
        encode_payload("insert", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        encode_payload("insert", {"at": object()})
    with pytest.raises(ConfigError, match="PostgreSQL allows at most 7999"):
        encode_payload("insert", {"blob": "x" * 8000})
    assert decode_payload('{"a": 1}') == {"a": 1}
    assert decode_payload("[1]") is None
    assert decode_payload("nope") is None


async def test_local_notifier_delivers_in_process_by_topic() -> None:
    notifier: Notifier = LocalNotifier()
    inserts, on_insert = recorder()
    signals, on_signal = recorder()
    unsubscribe = notifier.subscribe("insert", on_insert)
    notifier.subscribe("signal", on_signal)

    assert await notifier.wait_ready(0.1) == "listening"
    await notifier.notify("insert", {"queue": "media", "ids": (1, 2)})
    unsubscribe()
    await notifier.notify("insert", {"queue": "ignored"})
    await notifier.notify("signal", {"action": "resume"})

    # The same JSON round trip as through PostgreSQL: tuples arrive as lists.
    assert inserts == [{"queue": "media", "ids": [1, 2]}]
    assert signals == [{"action": "resume"}]
    assert notifier.status == "listening"
    with pytest.raises(ConfigError, match="PostgreSQL allows at most"):
        await notifier.notify("insert", {"blob": "x" * 8000})


async def test_local_notifier_runs_as_a_service_until_cancelled() -> None:
    notifier = LocalNotifier()
    received, on_insert = recorder()
    notifier.subscribe("insert", on_insert)

    with anyio.fail_after(TIMEOUT):
        async with running(notifier):
            await notifier.notify("insert", {"n": 1})

    assert received == [{"n": 1}]
