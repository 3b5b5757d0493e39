"""The vocabulary of deliveries and attempts: statuses, transitions, outcomes, error classes.

These are the values the database's CHECK constraints accept (``sql/chimeway/0001_*.sql``); the
two must change together.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "CHECKPOINTS",
    "ERROR_CLASSES",
    "OUTCOMES",
    "STATUSES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Checkpoint",
    "DeliveryStatus",
    "ErrorClass",
    "FailureKind",
    "Outcome",
    "Reason",
]

DeliveryStatus = Literal[
    "pending", "dispatched", "succeeded", "failed", "suppressed", "cancelled", "digested"
]
STATUSES: Final[tuple[DeliveryStatus, ...]] = (
    "pending",
    "dispatched",
    "succeeded",
    "failed",
    "suppressed",
    "cancelled",
    "digested",
)

#: States a delivery never leaves. ``failed`` is not one: it means a retry is expected.
#: ``digested``: a digest delivery carried it (:mod:`chimeway.digests`; only its flush sets it).
TERMINAL_STATES: Final[tuple[DeliveryStatus, ...]] = ("succeeded", "suppressed", "cancelled", "digested")

#: The moves :func:`chimeway.deliveries.transition_status` allows (Elixir Chimeway 1.0's table).
#: ``failed → cancelled`` is only :func:`~chimeway.deliveries.exhaust_delivery`'s to make, and
#: ``dispatched → cancelled`` only :func:`~chimeway.deliveries.record_attempt`'s; ``succeeded →
#: cancelled`` (``bounced``) only a provider's bounce report's (:mod:`chimeway.feedback`).
TRANSITIONS: Final = MappingProxyType(
    {
        "pending": ("dispatched", "suppressed", "cancelled"),
        "dispatched": ("succeeded", "failed", "suppressed"),
        "failed": ("dispatched",),
        "succeeded": (),
        "suppressed": (),
        "cancelled": (),
        "digested": (),
    }
)

Outcome = Literal["succeeded", "failed", "bounced", "rejected"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("succeeded", "failed", "bounced", "rejected")

ErrorClass = Literal["temporary", "permanent", "bounced", "unknown_classification"]
ERROR_CLASSES: Final[tuple[ErrorClass, ...]] = ("temporary", "permanent", "bounced", "unknown_classification")

#: The failures an adapter may report: retry, never retry, address unreachable.
FailureKind = Literal["temporary", "permanent", "bounced"]

#: Where a policy decision was taken: while planning the delivery, or when about to send it.
Checkpoint = Literal["planning", "perform"]
CHECKPOINTS: Final[tuple[Checkpoint, ...]] = ("planning", "perform")


class Reason:
    """The ``suppression_reason`` values chimeway itself writes."""

    PERMANENT_FAILURE: Final = "permanent_failure"
    BOUNCED: Final = "bounced"
    RETRIES_EXHAUSTED: Final = "retries_exhausted"
    CHANNEL_DISABLED: Final = "channel_disabled"
    CATEGORY_DISABLED: Final = "category_disabled"
    ALREADY_READ: Final = "already_read"
    DELIVERY_CAP_REACHED: Final = "delivery_cap_reached"
