"""Messages between nodes by topic: PostgreSQL LISTEN/NOTIFY, with reconnects and a polling fallback.

A :class:`Notifier` carries small JSON objects on named topics (``insert``, ``signal``, ``leader``
…) between every node that runs queues in one schema. Producers subscribe to learn that jobs
arrived; the leader announces that it steps down; queue control wakes the nodes the same way (the
commands themselves are rows of a table, see :mod:`pgqueue.control`: anyone who can connect can
notify). Two implementations share the protocol:

- :class:`PostgresNotifier` listens on one dedicated connection and survives its loss. When LISTEN
  turns out to be useless (behind a transaction-mode pooler, say), it reports ``"polling"`` so
  subscribers fall back to polling the database.
- :class:`LocalNotifier` delivers within the process: for tests and single-process runtimes.

Topic ``t`` in schema ``s`` travels on the channel :func:`pgqueue.store.channel_name` ``(s, t)``, so
queues in different schemas of one database never hear each other. A transaction may publish
directly with ``SELECT pg_notify(channel_name(s, t), '{"queue": "media"}')``; subscribers receive
it at commit, decoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import psycopg
from psycopg import sql

from .errors import ConfigError
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, describe_error
from .store import channel_name, queries_for
from .topics import (
    MAX_PAYLOAD_BYTES,
    LocalNotifier,
    Notifier,
    NotifierStatus,
    Payload,
    StatusCallback,
    Subscriber,
    Subscriptions,
    Unsubscribe,
    check_topic,
    decode_payload,
    encode_payload,
)

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "LocalNotifier",
    "Notifier",
    "NotifierStatus",
    "Payload",
    "PostgresNotifier",
    "StatusCallback",
    "Subscriber",
    "Unsubscribe",
    "decode_payload",
    "encode_payload",
]

logger = logging.getLogger(__name__)

_READY: frozenset[NotifierStatus] = frozenset({"listening", "polling"})
# Applied unless the conninfo says otherwise.
_DEFAULT_CONNECT_OPTIONS = {
    "application_name": "pgqueue-notifier",
    # Without it, connecting to a host that drops packets waits for the OS's TCP timeout (minutes)
    # before the backoff even starts.
    "connect_timeout": "10",
    # A listener mostly waits in silence; TCP keepalives are how it learns that a network path died
    # without a word from the server.
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


class PostgresNotifier:
    """LISTEN/NOTIFY on one dedicated connection: reconnects after failures, falls back to polling.

    Run it as a service (``tg.start_soon(supervise, notifier)``); ``run()`` connects with
    ``conninfo`` (autocommit), LISTENs on every subscribed topic, and after a lost connection
    reconnects with backoff and LISTENs again. Subscriptions may come and go at any time.

    Once listening, it checks that LISTEN really works: it sends itself a ping and waits
    ``ping_timeout`` seconds. Behind a transaction-mode pooler the ping never comes back; the status
    then becomes ``"polling"`` (logged once), and every ``recheck_interval`` seconds it listens again
    and re-pings, returning to ``"listening"`` when the ping arrives.

    ``notify`` publishes through ``pool`` when given, otherwise on a short-lived connection.
    """

    name = "notifier"

    def __init__(
        self,
        conninfo: str,
        schema: str,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        ping_timeout: float = 1.0,
        recheck_interval: float = 30.0,
        min_delay: float = 0.1,
        max_delay: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if ping_timeout <= 0:
            raise ConfigError(f"ping_timeout must be > 0 seconds, got {ping_timeout!r}")
        if recheck_interval <= 0:
            raise ConfigError(f"recheck_interval must be > 0 seconds, got {recheck_interval!r}")
        self._conninfo = conninfo
        self._connect_options = self._defaults_for(conninfo)
        self._schema = schema
        self._queries = queries_for(schema)
        self._pool = pool
        self._ping_timeout = ping_timeout
        self._recheck_interval = recheck_interval
        self._backoff = Backoff(min_delay, max_delay)
        self._clock = clock

        self._subscriptions = Subscriptions()
        self._status: NotifierStatus = "stopped"
        self._ready: anyio.Event | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # channel -> topic for everything LISTENed on the current connection
        self._listening: dict[str, str] = {}
        # Subscriptions changed since the last LISTEN/UNLISTEN; the loop applies them.
        self._dirty = False
        # Cancelled by subscribe() to pull the loop out of its wait for notifications.
        self._interrupt: anyio.CancelScope | None = None
        self._ping_topic = f"ping.{uuid.uuid4().hex[:16]}"
        self._ping_token: str | None = None
        self._ping_deadline: float | None = None
        self._recheck_at: float | None = None

    @staticmethod
    def _defaults_for(conninfo: str) -> dict[str, Any]:
        # Parsing here also rejects a malformed conninfo at construction, not at the first connect.
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        options: dict[str, Any] = {
            key: value for key, value in _DEFAULT_CONNECT_OPTIONS.items() if key not in given
        }
        if "PGAPPNAME" in os.environ:
            options.pop("application_name", None)
        return options

    # -- the protocol -------------------------------------------------------------------------

    @property
    def status(self) -> NotifierStatus:
        return self._status

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection, while there is one (for diagnostics)."""
        return self._conn.info.backend_pid if self._conn is not None and not self._conn.closed else None

    def subscribe(self, topic: str, callback: Subscriber) -> Unsubscribe:
        is_new, unsubscribe = self._subscriptions.add(topic, callback)
        if is_new:
            self._topics_changed()

        def unsubscribe_and_unlisten() -> None:
            unsubscribe()
            if topic not in self._subscriptions.topics:
                self._topics_changed()

        return unsubscribe_and_unlisten

    def on_status(self, callback: StatusCallback) -> Unsubscribe:
        return self._subscriptions.add_status(callback)

    async def notify(self, topic: str, payload: Payload) -> None:
        check_topic(topic)
        params = {"channel": channel_name(self._schema, topic), "payload": encode_payload(topic, payload)}
        if self._pool is not None:
            async with self._pool.connection() as conn:
                await conn.execute(self._queries.notifier_notify, params)
            return
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, **self._connect_options
        ) as conn:
            await conn.execute(self._queries.notifier_notify, params)

    async def wait_ready(self, timeout: float) -> NotifierStatus:
        with anyio.fail_after(timeout):
            while self._status not in _READY:
                if self._ready is None:
                    self._ready = anyio.Event()
                await self._ready.wait()
        return self._status

    # -- the service --------------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff whenever the connection fails."""
        failures = 0
        try:
            while True:
                self._set_status("connecting")
                try:
                    await self._listen_on_new_connection()
                except (psycopg.Error, OSError) as exc:
                    # _listen_on_new_connection only returns by raising; a session that got as far
                    # as LISTEN reset the count, so the first retry after a long healthy run is quick.
                    failures = 0 if self._listening else failures
                    failures += 1
                    delay = self._backoff.delay(failures, self._clock.random())
                    logger.warning(
                        "pgqueue notifier connection failed (%s); reconnecting in %.2fs (attempt %d)",
                        describe_error(exc),
                        delay,
                        failures,
                    )
                    self._set_status("connecting")
                    await self._clock.sleep(delay)
        finally:
            self._set_status("stopped")

    async def _listen_on_new_connection(self) -> None:
        self._listening = {}
        self._ping_token = self._ping_deadline = self._recheck_at = None
        # Never prepared (LISTEN gains nothing from it, and a pooler may move it between sessions).
        options = {"autocommit": True, "prepare_threshold": None, **self._connect_options}
        conn = await psycopg.AsyncConnection.connect(self._conninfo, **options)
        self._conn = conn
        try:
            await self._apply_subscriptions(conn)
            await self._start_self_test()
            while True:
                await self._self_test_step(conn)
                while self._dirty:
                    await self._apply_subscriptions(conn)
                timeout = self._next_deadline()
                with anyio.CancelScope() as scope:
                    self._interrupt = scope
                    # stop_after=1 hands back control after each batch of notifications, without
                    # dropping any: psycopg yields the whole batch first.
                    notifications = conn.notifies(timeout=timeout, stop_after=1)
                    async with contextlib.aclosing(notifications):
                        async for notification in notifications:
                            self._receive(notification)
                self._interrupt = None
        finally:
            self._interrupt = None
            self._conn = None
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _topics_changed(self) -> None:
        self._dirty = True
        if self._interrupt is not None:
            self._interrupt.cancel()

    async def _apply_subscriptions(self, conn: psycopg.AsyncConnection[Any], *, again: bool = False) -> None:
        """LISTEN on new topics and UNLISTEN dropped ones (``again``: re-LISTEN everything)."""
        self._dirty = False
        wanted = {channel_name(self._schema, topic): topic for topic in self._subscriptions.topics}
        wanted[channel_name(self._schema, self._ping_topic)] = self._ping_topic
        for channel, topic in wanted.items():
            if again or channel not in self._listening:
                await self._listen(conn, channel)
                self._listening[channel] = topic
        for channel in [channel for channel in self._listening if channel not in wanted]:
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
            del self._listening[channel]

    async def _listen(self, conn: psycopg.AsyncConnection[Any], channel: str) -> None:
        """Run LISTEN for ``channel`` on the listening connection (a seam for tests of the fallback)."""
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _receive(self, notification: psycopg.Notify) -> None:
        topic = self._listening.get(notification.channel)
        if topic is None:
            return
        if topic == self._ping_topic:
            payload = decode_payload(notification.payload)
            if (
                payload is not None
                and self._ping_token is not None
                and payload.get("ping") == self._ping_token
            ):
                self._ping_heard()
            return
        self._subscriptions.deliver(topic, notification.payload)

    # -- the self-test: does LISTEN really hear? ----------------------------------------------

    async def _start_self_test(self) -> None:
        token = uuid.uuid4().hex
        self._ping_token = token
        self._ping_deadline = self._clock.monotonic() + self._ping_timeout
        self._recheck_at = None
        try:
            await self._send_ping(token)
        except (psycopg.Error, OSError) as exc:
            # The listening connection may be fine; an unsent ping just counts as unheard.
            logger.debug("pgqueue notifier could not send its ping (%s)", describe_error(exc))

    async def _send_ping(self, token: str) -> None:
        # Through the same path as every other publisher, so the test covers the real route.
        await self.notify(self._ping_topic, {"ping": token})

    def _ping_heard(self) -> None:
        self._ping_token = self._ping_deadline = self._recheck_at = None
        if self._status == "polling":
            logger.info("pgqueue notifier hears notifications again; back to listening")
        self._set_status("listening")

    async def _self_test_step(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = self._clock.monotonic()
        if self._ping_deadline is not None and now >= self._ping_deadline:
            self._ping_token = self._ping_deadline = None
            self._recheck_at = now + self._recheck_interval
            if self._status != "polling":
                logger.warning(
                    "pgqueue notifier sent itself a ping that never arrived within %.1fs: LISTEN does "
                    "not work on this connection (a transaction-mode pooler?). Falling back to polling; "
                    "retrying every %.0fs",
                    self._ping_timeout,
                    self._recheck_interval,
                )
            self._set_status("polling")
        elif self._recheck_at is not None and now >= self._recheck_at:
            await self._apply_subscriptions(conn, again=True)
            await self._start_self_test()

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (self._ping_deadline, self._recheck_at) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self._clock.monotonic())

    def _set_status(self, status: NotifierStatus) -> None:
        if status == self._status:
            return
        self._status = status
        if status in _READY:
            if self._ready is not None:
                self._ready.set()
        elif self._ready is not None and self._ready.is_set():
            self._ready = None
        self._subscriptions.announce(status)


if TYPE_CHECKING:
    # Never runs: makes mypy prove that both notifiers keep the protocol.
    _IMPLEMENTATIONS: tuple[type[Notifier], ...] = (LocalNotifier, PostgresNotifier)
