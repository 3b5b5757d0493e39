"""The exceptions chimeway raises. Everything derives from :class:`ChimewayError`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "ChimewayError",
    "DeliveryNotFound",
    "InvalidCursor",
    "InvalidExhaust",
    "InvalidTransition",
    "InvalidValue",
    "NotificationNotFound",
    "UnknownAdapter",
]


class ChimewayError(Exception):
    """Base class of every error raised by chimeway."""


class InvalidValue(ChimewayError, ValueError):
    """An argument is not one of the values chimeway accepts; the message names it and the valid ones."""

    def __init__(self, name: str, value: Any, valid: Iterable[object] | str) -> None:
        expected = valid if isinstance(valid, str) else "one of " + ", ".join(repr(v) for v in valid)
        super().__init__(f"{name} must be {expected}, got {value!r}")
        self.name = name
        self.value = value


class InvalidCursor(ChimewayError, ValueError):
    """A pagination or change-feed cursor is not one chimeway handed out (or was altered)."""


class DeliveryNotFound(ChimewayError, LookupError):
    """No delivery has the given id."""

    def __init__(self, delivery_id: Any) -> None:
        super().__init__(f"no delivery with id {str(delivery_id)!r}")
        self.delivery_id = delivery_id


class NotificationNotFound(ChimewayError, LookupError):
    """No notification has the given id."""

    def __init__(self, notification_id: Any) -> None:
        super().__init__(f"no notification with id {str(notification_id)!r}")
        self.notification_id = notification_id


class InvalidTransition(ChimewayError):
    """A delivery can't move from its status to the one asked for."""

    def __init__(
        self, from_status: str, to_status: str, allowed: Iterable[str] = (), *, hint: str | None = None
    ) -> None:
        targets = ", ".join(repr(s) for s in allowed)
        if hint is None:
            hint = f"from {from_status!r} it may go to {targets}" if targets else f"{from_status!r} is final"
        super().__init__(f"a delivery can't go from {from_status!r} to {to_status!r}; {hint}")
        self.from_status = from_status
        self.to_status = to_status


class InvalidExhaust(ChimewayError):
    """Only a ``failed`` delivery can be exhausted (cancelled with ``retries_exhausted``)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"only a 'failed' delivery can be exhausted, this one is {status!r}")
        self.status = status


class UnknownAdapter(ChimewayError, LookupError):
    """No adapter is registered under the given name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = ", ".join(repr(n) for n in known)
        super().__init__(f"no adapter named {name!r}; the adapters are {names}")
        self.adapter_name = name
