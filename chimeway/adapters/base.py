"""What an adapter is: ``deliver(delivery, config)`` returning :class:`Delivered` or :class:`Failed`.

An adapter sends one delivery over one channel (an email API, a webhook, a push service) and
says what happened. It never touches the database and is never called inside a transaction: the
dispatcher marks the delivery dispatched and commits, calls ``deliver``, turns the result into an
attempt row with :func:`classify`, then records it with
:func:`chimeway.deliveries.record_attempt`::

    context = deliveries.delivery_context(session, delivery_id)
    result = adapter.deliver(context, config)
    deliveries.record_attempt(session, delivery_id, AttemptOutcome(*classify(result), adapter=adapter.name))

Return :class:`Failed` with ``"temporary"`` for anything worth retrying (timeouts, throttling,
5xx), ``"permanent"`` when retrying can't help (a rejected payload), ``"bounced"`` when the
address is unreachable. Keep ``meta`` and ``detail`` small and free of personal data and secrets.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..redaction import redact
from ..states import ErrorClass, FailureKind, Outcome

__all__ = [
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
    #: the notification's rendered content, as the notifier built it for this recipient
    metadata: Mapping[str, Any] = field(default_factory=dict)

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
    """Sends deliveries over a channel. Implementations must be safe to call from several threads."""

    @property
    def name(self) -> str:
        """The name recorded on each attempt ("logger", "webhook", …)."""
        ...

    def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
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


def classify(result: object) -> Classification:
    """Turn whatever an adapter returned into an attempt's outcome, error class and response.

    Anything but a :class:`Delivered` or a :class:`Failed` of a known kind is recorded as
    ``rejected`` / ``unknown_classification`` with an empty response: the dispatcher can't know
    what happened, and an unexpected value must not leak into the database.
    """
    if isinstance(result, Delivered):
        meta = _response(result.meta)
        return Classification("succeeded", None, meta, _message_id(meta.get("provider_message_id")))
    if isinstance(result, Failed) and result.kind in _FAILURES:
        outcome, error_class = _FAILURES[result.kind]
        return Classification(outcome, error_class, _response(result.detail), None)
    return Classification("rejected", "unknown_classification", {}, None)


def _response(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    return _json_object(redact(value))


def _json_object(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(key): _jsonable(item) for key, item in mapping.items()}


def _jsonable(value: Any) -> Any:
    """A value PostgreSQL's jsonb accepts: unknown types become strings, as do NaN and infinities."""
    if isinstance(value, Mapping):
        return _json_object(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _message_id(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value) or None
