"""The retry contract's vocabulary: the queue, the budget, channel routes, and how a recorded
attempt becomes the job's result. Shared by the batched hot path and the one-at-a-time path."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pgqueue

from ..adapters import Adapter
from ..errors import ChimewayError

__all__ = [
    "CRASH_ALLOWANCE",
    "DELIVERY_ATTEMPTS",
    "QUEUE",
    "ChannelRoute",
    "UnhandledOutcomeError",
    "deferral",
    "job_result",
    "log_outcome",
    "not_found",
    "summary",
]

QUEUE: Final = "chimeway_delivery"
#: The retry budget: the fifth attempt is the final one (a temporary failure then exhausts it).
DELIVERY_ATTEMPTS: Final = 5
#: Spare runs of the job beyond the budget, for crashes. A worker killed during the final attempt
#: leaves its job to the lifeline, which discards a job that has no attempts left: the delivery
#: would then stay ``dispatched`` forever, never ended or explained (found by ``make chaos``).
#: With spare attempts the rescued job runs again, re-sends under the same idempotency key, and
#: still ends the delivery.
CRASH_ALLOWANCE: Final = 5

_log = logging.getLogger("chimeway.delivery")


class UnhandledOutcomeError(ChimewayError):
    """An adapter result that is neither delivered nor a known failure, before the final attempt.

    The attempt is already recorded (``rejected`` / ``unknown_classification``) and the delivery is
    ``failed``; raising makes the queue retry it.
    """

    def __init__(
        self, delivery_id: uuid.UUID, outcome: str, error_class: str | None, attempt: int, max_attempts: int
    ):
        self.delivery_id = delivery_id
        self.outcome = outcome
        self.error_class = error_class
        self.attempt = attempt
        self.max_attempts = max_attempts
        super().__init__(
            f"delivery {delivery_id}: unhandled outcome {outcome}/{error_class} "
            f"on attempt {attempt} of {max_attempts}"
        )


@dataclass(frozen=True)
class ChannelRoute:
    """Which adapter sends a channel, with what configuration, within what deadline.

    ``timeout`` bounds one adapter call (seconds): past it the attempt is a temporary failure.
    None takes the adapter's ``attempt_timeout(config)`` if it has one, else the dispatcher's
    ``attempt_timeout``.
    """

    adapter: Adapter
    config: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    def __repr__(self) -> str:
        # Config values may be secrets (tokens, signing keys, auth headers): keys only.
        return (
            f"ChannelRoute(adapter={getattr(self.adapter, 'name', type(self.adapter).__name__)!r}, "
            f"config keys={sorted(str(k) for k in self.config)}, timeout={self.timeout!r})"
        )


def job_result(
    delivery_id: uuid.UUID,
    outcome: str,
    error_class: str | None,
    response: Mapping[str, Any] | None,
    exhausted: bool,
    attempt: int,
    budget: int,
) -> Any:
    """The job's result for a recorded attempt (the seed's return-value contract).

    Delivered → success. Permanent or bounced → success (the delivery is already cancelled with
    its reason). Exhausted on the final attempt → success (the job completes, the delivery row
    explains). A temporary failure with attempts left → ``pgqueue.Error``, so the queue retries
    with its backoff. Anything else → :class:`UnhandledOutcomeError` (retried).
    """
    if outcome == "succeeded" or error_class in ("permanent", "bounced") or exhausted:
        return None
    if error_class == "temporary":
        return pgqueue.Error(f"adapter_temporary: {summary(response)}")
    raise UnhandledOutcomeError(delivery_id, outcome, error_class, attempt, budget)


#: A deferred delivery's job wakes this long after the release time, so that it finds it due.
DEFERRAL_MARGIN: Final = 0.5


def deferral(wait: float) -> pgqueue.Snooze:
    """The result of a job whose delivery is deferred for ``wait`` more seconds (quiet hours).

    The job is snoozed until then, without using up an attempt: that run releases the delivery
    (a scheduled job, not a poller).
    """
    return pgqueue.Snooze(max(wait, 0.0) + DEFERRAL_MARGIN)


def not_found(delivery_id: uuid.UUID) -> pgqueue.Cancel:
    """The result of a job whose delivery does not exist (any more): retrying can't help."""
    return pgqueue.Cancel(f"delivery {delivery_id} not found")


def summary(response: Mapping[str, Any] | None) -> str:
    if not response:
        return "no detail"
    return ", ".join(
        f"{k}={v}" for k, v in sorted(response.items()) if isinstance(v, str | int | float | bool)
    )[:200]


def log_outcome(
    delivery_id: uuid.UUID, channel: str, status: str, reason: str | None, attempt_number: int | None
) -> None:
    """One structured line per delivery outcome; ids and classes only, never content."""
    if not _log.isEnabledFor(logging.INFO):
        return
    fields = {
        "delivery_id": str(delivery_id),
        "channel": channel,
        "status": status,
        "suppression_reason": reason,
        "attempt_number": attempt_number,
    }
    _log.info("delivery %s %s", fields["delivery_id"], status, extra={"fields": fields})


@dataclass(frozen=True, slots=True)
class Route:
    """A :class:`ChannelRoute` prepared for the hot path: how to call it and for how long."""

    adapter: Adapter
    config: Mapping[str, Any]
    #: the name recorded on each attempt
    name: str
    is_async: bool
    #: seconds one call may take before it counts as a temporary failure
    deadline: float
