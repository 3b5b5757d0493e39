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
import inspect
import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import anyio.lowlevel
import psycopg
from psycopg import sql

from .errors import ConfigError
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, Service, describe_error
from .store import channel_name, queries_for

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

NotifierStatus = Literal["connecting", "listening", "polling", "stopped"]
Payload = dict[str, Any]
Subscriber = Callable[[Payload], None]
StatusCallback = Callable[[NotifierStatus], None]
Unsubscribe = Callable[[], None]

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999

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


class Notifier(Service, Protocol):
    """Publish and receive JSON objects by topic between the nodes of one schema.

    Subscribers are plain functions called on the event loop with the decoded payload; they must
    not block (set an :class:`anyio.Event` or send to a memory stream to hand work to a task) and
    must treat the dict as read-only, since every subscriber of a topic gets the same one.
    """

    @property
    def status(self) -> NotifierStatus:
        """``"listening"`` when notifications arrive; anything else means: poll, don't wait for them."""
        ...

    def subscribe(self, topic: str, callback: Subscriber) -> Unsubscribe:
        """Call ``callback(payload)`` for each message on ``topic``; call the result to stop."""
        ...

    def on_status(self, callback: StatusCallback) -> Unsubscribe:
        """Call ``callback(status)`` on every status change; call the result to stop."""
        ...

    async def notify(self, topic: str, payload: Payload) -> None:
        """Publish ``payload`` (a JSON-serialisable dict) to every subscriber of ``topic`` on every node."""
        ...

    async def wait_ready(self, timeout: float) -> NotifierStatus:
        """Wait until the status is ``"listening"`` or ``"polling"``; raise TimeoutError after ``timeout``."""
        ...


def encode_payload(topic: str, payload: Payload) -> str:
    """``payload`` as compact JSON text, checked to be an object that fits in one notification."""
    if not isinstance(payload, dict):
        raise ConfigError(
            f"notification payload for topic {topic!r} must be a dict, got {type(payload).__name__}"
        )
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"notification payload for topic {topic!r} is not JSON-serialisable: {exc}"
        ) from exc
    size = len(text.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise ConfigError(
            f"notification payload for topic {topic!r} is {size} bytes of JSON; "
            f"PostgreSQL allows at most {MAX_PAYLOAD_BYTES}"
        )
    return text


def decode_payload(text: str) -> Payload | None:
    """The JSON object in ``text``, or None when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: anyone may pg_notify a payload nested thousands of levels deep; it must
        # be dropped like any other garbage, not take the listening connection down with it.
        return None
    return value if isinstance(value, dict) else None


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"notification topic must be a non-empty string, got {topic!r}")


class _Subscriptions:
    """Who listens to what, and the delivery rules both notifiers share."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Subscriber]] = {}
        self.status_callbacks: list[StatusCallback] = []
        self._warned_topics: set[str] = set()

    def add(self, topic: str, callback: Subscriber) -> tuple[bool, Unsubscribe]:
        """Register ``callback``; also says whether ``topic`` is new (so it needs a LISTEN)."""
        _check_topic(topic)
        if inspect.iscoroutinefunction(callback):
            raise ConfigError(
                f"notifier subscribers must be plain functions, got coroutine function {callback!r}; "
                "set an anyio.Event or send to a memory stream from a plain function instead"
            )
        callbacks = self.topics.setdefault(topic, [])
        is_new = not callbacks
        callbacks.append(callback)
        active = True

        def unsubscribe() -> None:
            # Idempotent, and one handle removes one subscription even if the same function was
            # subscribed twice.
            nonlocal active
            if not active:
                return
            active = False
            current = self.topics.get(topic)
            if current is None:
                return
            with contextlib.suppress(ValueError):
                current.remove(callback)
            if not current:
                del self.topics[topic]

        return is_new, unsubscribe

    def add_status(self, callback: StatusCallback) -> Unsubscribe:
        self.status_callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self.status_callbacks.remove(callback)

        return unsubscribe

    def deliver(self, topic: str, text: str) -> None:
        """Decode ``text`` and hand it to ``topic``'s subscribers; a bad payload is dropped."""
        callbacks = self.topics.get(topic)
        if not callbacks:
            return
        payload = decode_payload(text)
        if payload is None:
            # Anyone can pg_notify on our channels; garbage must never stop delivery. Warn the first
            # time per topic so the sender can be found, then stay quiet so a flood can't fill the logs.
            level = logging.DEBUG if topic in self._warned_topics else logging.WARNING
            self._warned_topics.add(topic)
            logger.log(level, "pgqueue notifier dropped a malformed payload on topic %r: %.100r", topic, text)
            return
        # A copy, so a subscriber may unsubscribe (itself or others) while being called.
        for callback in list(callbacks):
            try:
                callback(payload)
            except Exception:
                logger.exception("pgqueue notifier subscriber %r failed on topic %r", callback, topic)

    def announce(self, status: NotifierStatus) -> None:
        for callback in list(self.status_callbacks):
            try:
                callback(status)
            except Exception:
                logger.exception("pgqueue notifier status callback %r failed", callback)


class LocalNotifier:
    """A notifier for one process: ``notify`` calls this process's subscribers directly.

    For tests, and for a runtime whose nodes all live in one process. Payloads take the same JSON
    round trip as through PostgreSQL, so a payload that works here works there too. Its status is
    always ``"listening"``; ``run()`` only waits for cancellation, so it can be supervised like
    any other service.
    """

    name = "notifier"

    def __init__(self) -> None:
        self._subscriptions = _Subscriptions()

    @property
    def status(self) -> NotifierStatus:
        return "listening"

    def subscribe(self, topic: str, callback: Subscriber) -> Unsubscribe:
        return self._subscriptions.add(topic, callback)[1]

    def on_status(self, callback: StatusCallback) -> Unsubscribe:
        return self._subscriptions.add_status(callback)

    async def notify(self, topic: str, payload: Payload) -> None:
        self._subscriptions.deliver(topic, encode_payload(topic, payload))
        await anyio.lowlevel.checkpoint()

    async def wait_ready(self, timeout: float) -> NotifierStatus:
        return "listening"

    async def run(self) -> None:
        await anyio.sleep_forever()


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

        self._subscriptions = _Subscriptions()
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
        _check_topic(topic)
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
