"""What every notifier shares: the :class:`Notifier` protocol, the payload codec, the subscriber
bookkeeping, and :class:`LocalNotifier`, the in-process notifier (tests, one-process runtimes).

:class:`pgqueue.notifier.PostgresNotifier` is the one that crosses processes; everything here is
re-exported from :mod:`pgqueue.notifier`, the module to import from.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel

from .errors import ConfigError
from .lifecycle import Service

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "LocalNotifier",
    "Notifier",
    "NotifierStatus",
    "Payload",
    "StatusCallback",
    "Subscriber",
    "Unsubscribe",
    "decode_payload",
    "encode_payload",
]

# The notifier's one logger, whichever module of it writes.
logger = logging.getLogger("pgqueue.notifier")

NotifierStatus = Literal["connecting", "listening", "polling", "stopped"]
Payload = dict[str, Any]
Subscriber = Callable[[Payload], None]
StatusCallback = Callable[[NotifierStatus], None]
Unsubscribe = Callable[[], None]

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7999


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


def check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"notification topic must be a non-empty string, got {topic!r}")


class Subscriptions:
    """Who listens to what, and the delivery rules both notifiers share."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Subscriber]] = {}
        self.status_callbacks: list[StatusCallback] = []
        self._warned_topics: set[str] = set()

    def add(self, topic: str, callback: Subscriber) -> tuple[bool, Unsubscribe]:
        """Register ``callback``; also says whether ``topic`` is new (so it needs a LISTEN)."""
        check_topic(topic)
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
        self._subscriptions = Subscriptions()

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
