"""An in-memory adapter for tests: records every call and returns what you script.

::

    adapter = TestAdapter()
    adapter.script(Failed("temporary"), Delivered({"provider_message_id": "m-1"}))
    ...                                  # the first call fails, the second succeeds
    adapter.assert_delivered(channel="email")
    adapter.clear()

Scripted results are handed out in order, first from the queue of the delivery being sent
(``script(..., delivery_id=...)``), then from the global queue, then the default (a
:class:`Delivered`, unless :meth:`TestAdapter.set_default` says otherwise). A scripted exception
is raised instead of returned; any other value, even one that is not a valid result, is returned
as is, so tests can see how the dispatcher copes. Thread-safe.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from .base import Delivered, DeliveryContext, Failed

__all__ = ["Call", "TestAdapter"]


@dataclass(frozen=True, slots=True)
class Call:
    """One call of :meth:`TestAdapter.deliver`: what it was given and what it answered."""

    delivery: DeliveryContext
    config: Mapping[str, Any]
    result: object


class TestAdapter:
    """Scriptable, recording adapter; ``resolve_adapter("test")`` returns one shared instance."""

    __test__ = False  # not a pytest test class, whatever its name says
    name = "test"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._queues: dict[uuid.UUID | None, deque[object]] = {}
        self._default: object = Delivered({"adapter": "test"})

    def script(self, *results: object, delivery_id: uuid.UUID | None = None) -> None:
        """Queue ``results`` for the next calls for ``delivery_id``, or for any delivery when None."""
        with self._lock:
            self._queues.setdefault(delivery_id, deque()).extend(results)

    def set_default(self, result: object) -> None:
        """What calls return once the scripts run out, e.g. ``Failed("temporary")`` for an outage."""
        with self._lock:
            self._default = result

    def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
        with self._lock:
            result = self._next(delivery.delivery_id)
            self._calls.append(Call(delivery, dict(config), result))
        if isinstance(result, BaseException):
            raise result
        # Deliberately unchecked: a script may return a malformed value to exercise classify().
        return cast("Delivered | Failed", result)

    def _next(self, delivery_id: uuid.UUID) -> object:
        for key in (delivery_id, None):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        return self._default

    def calls(self) -> list[Call]:
        """Every call so far, in order, whatever it returned."""
        with self._lock:
            return list(self._calls)

    def deliveries(self) -> list[DeliveryContext]:
        """The deliveries of the calls that returned :class:`Delivered`, in order."""
        return [call.delivery for call in self.calls() if isinstance(call.result, Delivered)]

    def assert_delivered(
        self,
        *,
        delivery_id: uuid.UUID | None = None,
        channel: str | None = None,
        notification_id: uuid.UUID | None = None,
        times: int | None = None,
    ) -> DeliveryContext:
        """Assert a delivery matching every given field was delivered (exactly ``times`` times if
        given); returns the last match. The failure message lists what was delivered."""
        wanted = {"delivery_id": delivery_id, "channel": channel, "notification_id": notification_id}
        wanted = {key: value for key, value in wanted.items() if value is not None}
        delivered = self.deliveries()
        matches = [d for d in delivered if all(getattr(d, k) == v for k, v in wanted.items())]
        if not matches or (times is not None and len(matches) != times):
            seen = [(str(d.delivery_id), d.channel, d.attempt_number) for d in delivered] or "nothing"
            expected = f"{times} deliveries" if times is not None else "a delivery"
            raise AssertionError(
                f"expected {expected} matching {wanted}, got {len(matches)}; delivered: {seen}"
            )
        return matches[-1]

    def clear(self) -> None:
        """Forget every call, script and default."""
        with self._lock:
            self._calls.clear()
            self._queues.clear()
            self._default = Delivered({"adapter": "test"})
