"""What an adapter is: ``deliver(delivery, config)`` returning :class:`Delivered` or :class:`Failed`.

An adapter sends one delivery over one channel (an email API, a webhook, a push service) and
says what happened. It never touches the database and is never called inside a transaction: the
dispatcher marks the delivery dispatched and commits, calls ``deliver``, turns the result into an
attempt row with :func:`classify`, then records it (:func:`chimeway.deliveries.record_attempt` is
the one-at-a-time form of that step)::

    context = deliveries.delivery_context(session, delivery_id)
    result = adapter.deliver(context, config)
    deliveries.record_attempt(session, delivery_id, AttemptOutcome(*classify(result), adapter=adapter.name))

``deliver`` may be a plain method or ``async def``. The dispatch worker awaits an async one on its
event loop, many at once (use it for network I/O: the webhook adapter does); it runs a plain one in
a worker thread, never on the loop. Either way each call has a deadline (the channel route's
``timeout``, or :meth:`attempt_timeout` if the adapter has one): past it the attempt counts as a
temporary failure.

Optional hooks: ``async def open()`` and ``async def aclose()`` are awaited when a dispatcher
starts and stops in an event loop (the place to create and close a shared client), and
``attempt_timeout(config)`` says how long one call may take with that configuration.

Return :class:`Failed` with ``"temporary"`` for anything worth retrying (timeouts, throttling,
5xx), ``"permanent"`` when retrying can't help (a rejected payload), ``"bounced"`` when the
address is unreachable. Keep ``meta`` and ``detail`` small and free of personal data and secrets.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from ..redaction import redact
from ..states import ErrorClass, FailureKind, Outcome

__all__ = [
    "MAX_MESSAGE_ID",
    "Adapter",
    "Classification",
    "Delivered",
    "DeliveryContext",
    "Failed",
    "classify",
    "redact",
]


@dataclass(frozen=True, slots=True)
class DeliveryContext:
    """Everything an adapter needs to send one attempt of one delivery (not the ORM row)."""

    delivery_id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    #: the number this attempt will be recorded under: 1 for the first, 2 after one failure, …
    attempt_number: int
    notification_key: str
    recipient_identity: str
    #: the notification's rendered content, as the notifier built it for this recipient (with the
    #: parts of the delivery's template merged in, when it names one: see chimeway.rendering)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: the template the delivery is rendered with, and the data it is rendered from
    render_key: str | None = None
    render_version: int | None = None
    render_data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """``<delivery_id>:<attempt_number>``: the same key if an attempt is re-sent after a crash
        (the attempt was never recorded, so its number is reused), a new one for each retry."""
        return f"{self.delivery_id}:{self.attempt_number}"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The provider accepted the message. ``meta`` is stored (redacted) as the provider response;
    its ``provider_message_id`` key, if any, is also stored in its own indexed column."""

    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    """The message was not delivered; ``kind`` says whether a retry can help."""

    kind: FailureKind
    detail: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    """Sends deliveries over a channel. A plain ``deliver`` must be safe to call from several
    threads at once; an ``async def deliver`` runs concurrently on one event loop."""

    @property
    def name(self) -> str:
        """The name recorded on each attempt ("logger", "webhook", …)."""
        ...

    def deliver(
        self, delivery: DeliveryContext, config: Mapping[str, Any]
    ) -> Delivered | Failed | Awaitable[Delivered | Failed]:
        """Send one attempt of ``delivery``; ``config`` is this channel's adapter configuration."""
        ...


class Classification(NamedTuple):
    """An adapter's result as the columns of an attempt row."""

    outcome: Outcome
    error_class: ErrorClass | None
    provider_response: dict[str, Any]
    provider_message_id: str | None


# Failure kind → (attempt outcome, error class), as in Elixir Chimeway 1.0 (reference §2.3).
_FAILURES: dict[str, tuple[Outcome, ErrorClass]] = {
    "temporary": ("failed", "temporary"),
    "permanent": ("rejected", "permanent"),
    "bounced": ("bounced", "bounced"),
}


#: The longest provider message id stored as is; a longer one is stored as its SHA-256.
MAX_MESSAGE_ID: Final = 255
# Bounds on what an adapter's meta or detail may put in the attempt row: deeper levels and longer
# strings are cut, so a hostile provider answer can't make a row too big or too deep to write.
_MAX_DEPTH: Final = 16
_MAX_TEXT: Final = 2_000
_MAX_ITEMS: Final = 100


def classify(result: object) -> Classification:
    """Turn whatever an adapter returned into an attempt's outcome, error class and response.

    Anything but a :class:`Delivered` or a :class:`Failed` of a known kind is recorded as
    ``rejected`` / ``unknown_classification`` with an empty response: the dispatcher can't know
    what happened, and an unexpected value must not leak into the database. The outcome is
    decided by the result's type and kind alone: a response that can't be stored (too deep, odd
    types, NUL characters) is trimmed or dropped, never turned into a failure.
    """
    if isinstance(result, Delivered):
        return Classification("succeeded", None, _response(result.meta), _raw_message_id(result.meta))
    if isinstance(result, Failed) and result.kind in _FAILURES:
        outcome, error_class = _FAILURES[result.kind]
        return Classification(outcome, error_class, _response(result.detail), None)
    return Classification("rejected", "unknown_classification", {}, None)


def message_id(value: object) -> str | None:
    """A provider message id as stored: text, no control characters, at most 255 characters.

    Integers become text. A value with a control character (NUL included) or that isn't valid
    text is refused (None); one longer than :data:`MAX_MESSAGE_ID` is stored as
    ``sha256:<hex>`` of it, so it stays findable by whoever holds the original.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text:
        return None
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return None
    if any(unicodedata.category(char) == "Cc" for char in text):
        return None
    if len(text) > MAX_MESSAGE_ID:
        return "sha256:" + hashlib.sha256(encoded).hexdigest()
    return text


def _raw_message_id(meta: object) -> str | None:
    # Taken from the adapter's own value, not the cleaned response: an id with a NUL in it is
    # refused, not stored with a replacement character that no provider would recognise.
    try:
        return message_id(meta.get("provider_message_id")) if isinstance(meta, Mapping) else None
    except Exception:
        return None


def _response(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    try:
        # Bounded first (depth, size, text), so redaction walks a small, shallow copy.
        return redact(_json_object(value, 0))
    except Exception:  # RecursionError included
        # Whatever the adapter put there (a self-referencing dict, an object whose str() raises):
        # the outcome stands, the response is dropped.
        return {}


def _json_object(mapping: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    items = list(mapping.items())[:_MAX_ITEMS]
    return {_text(str(key)): _jsonable(item, depth + 1) for key, item in items}


def _jsonable(value: Any, depth: int) -> Any:
    """A value PostgreSQL's jsonb accepts: unknown types become strings, as do NaN and infinities;
    NUL and lone surrogates are replaced; strings, lists and nesting are bounded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return _json_object(value, depth)
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item, depth + 1) for item in list(value)[:_MAX_ITEMS]]
    return _text(str(value))


def _text(value: str) -> str:
    if len(value) > _MAX_TEXT:
        value = value[:_MAX_TEXT] + "…"
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value
