"""The dispatch worker: performs one delivery, by ``delivery_id``, under Chimeway's retry contract.

Job args hold only ``delivery_id``; the delivery row is the truth. On each run:

1. A missing delivery or a malformed id cancels the job (retrying can't help).
2. A delivery that has ended (succeeded, suppressed, cancelled) or isn't ready → success, with no
   adapter call and no attempt row.
3. A fallback delivery whose notification was read meanwhile → suppressed (``already_read``).
4. Mark it dispatched and commit: no transaction stays open while the adapter runs.
5. Call the channel's adapter (an exception from it counts as a temporary failure).
6. ``record_attempt``: row lock, contiguous attempt number, state change, in one transaction.
7. Map the recorded outcome to the job's result, in the same transaction as step 6:

   * delivered → success;
   * permanent or bounced → success (the delivery is already cancelled with its reason);
   * temporary with attempts left → failure, so the queue retries it with its backoff;
   * temporary on the final attempt (attempt :data:`DELIVERY_ATTEMPTS`, 5) → ``exhaust_delivery``
     (cancelled, ``retries_exhausted``), then success: the job ends ``completed``, not
     ``discarded``, and the delivery row holds the explanation;
   * an unclassifiable result → :class:`UnhandledOutcomeError` (retried), or exhausted when it
     happens on the final attempt.

The job itself may run up to :data:`CRASH_ALLOWANCE` times more than the delivery's budget; those
runs only happen when a run on or after the final attempt ended without reaching step 7 (a killed
worker, or the database gone mid-run): see :data:`CRASH_ALLOWANCE`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import pgqueue

from . import deliveries, telemetry
from .adapters import Adapter, DeliveryContext, Failed, resolve_adapter
from .adapters.base import classify
from .errors import ChimewayError, DeliveryNotFound
from .models import Delivery, Notification
from .states import Reason

__all__ = [
    "CRASH_ALLOWANCE",
    "DELIVERY_ATTEMPTS",
    "QUEUE",
    "ChannelRoute",
    "DispatchWorker",
    "Dispatcher",
    "UnhandledOutcomeError",
    "configure",
    "current_dispatcher",
    "dispatch_job",
    "enqueue_in",
]

QUEUE = "chimeway_delivery"
#: The retry budget: the fifth attempt is the final one (a temporary failure then exhausts it).
DELIVERY_ATTEMPTS = 5
#: Spare runs of the job beyond the budget, for crashes. A worker killed during the final attempt
#: leaves its job to the lifeline, which discards a job that has no attempts left: the delivery
#: would then stay ``dispatched`` forever, never ended or explained (found by ``make chaos``).
#: With spare attempts the rescued job runs again, re-sends under the same idempotency key, and
#: still ends the delivery.
CRASH_ALLOWANCE = 5
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
    """Which adapter sends a channel, with what configuration."""

    adapter: Adapter
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Dispatcher:
    """What the dispatch worker needs: sessions, and an adapter for every channel.

    ``session_factory`` makes sync SQLAlchemy sessions on Chimeway's tables (map the schema with
    ``schema_translate_map``). ``routes`` maps a channel to its adapter and config; other channels
    use ``default`` (the logger adapter). ``retry_backoff`` overrides the queue's default backoff
    (seconds), e.g. to keep a demo short.
    """

    session_factory: Callable[[], Session]
    routes: Mapping[str, ChannelRoute] = field(default_factory=dict)
    default: ChannelRoute = field(default_factory=lambda: ChannelRoute(resolve_adapter("logger")))
    retry_backoff: float | None = None

    def route(self, channel: str) -> ChannelRoute:
        route = self.routes.get(channel)
        if route is None and self.routes:
            telemetry.emit(("chimeway", "dispatch", "adapter_fallback"), {"count": 1}, {"channel": channel})
        return route or self.default

    def perform(self, job: pgqueue.Job) -> Any:
        """Run one dispatch job; returns the job's result (None for success, or an outcome)."""
        delivery_id = _delivery_id(job.args)
        if delivery_id is None:
            return pgqueue.Cancel(f"malformed delivery_id: {job.args.get('delivery_id')!r}")
        try:
            return self._attempt(delivery_id, lambda session, recorded: self._result(session, recorded, job))
        except DeliveryNotFound:
            return pgqueue.Cancel(f"delivery {delivery_id} not found")

    def deliver_now(self, delivery_id: uuid.UUID | str) -> Delivery:
        """Send one attempt of a delivery now, in this thread, without the queue (sync dispatch).

        Nothing retries it: a temporary failure leaves the delivery ``failed``. Permanent and
        bounced failures end it as usual. Returns the delivery as it is afterwards.
        """
        key = uuid.UUID(str(delivery_id))
        self._attempt(key, lambda session, recorded: None)
        with self.session_factory() as session:
            return deliveries.get_delivery(session, key)

    def _attempt(
        self, delivery_id: uuid.UUID, finish: Callable[[Session, deliveries.RecordedAttempt], Any]
    ) -> Any:
        """Steps 2 to 6 of the module docstring; ``finish`` maps the recorded attempt to a result."""
        with self.session_factory() as session:
            delivery = deliveries.get_delivery(session, delivery_id)
            if delivery.status in deliveries.terminal_states() or delivery.orchestration_state != "ready":
                return None
            if delivery.delay_fallback and _notification_read(session, delivery):
                deliveries.suppress_delivery(session, delivery, Reason.ALREADY_READ, checkpoint="perform")
                session.commit()
                self._log(delivery, None)
                return None
            deliveries.transition_status(session, delivery, "dispatched")
            if delivery.status != "dispatched":
                return None  # another run ended it meanwhile
            context = deliveries.delivery_context(session, delivery_id)
            session.commit()

        route = self.route(context.channel)
        result = _deliver(route, context)

        with self.session_factory() as session:
            outcome = deliveries.AttemptOutcome(*classify(result), adapter=route.adapter.name)
            # The attempt and what it decides (exhaustion, on the final one) commit together: a
            # worker killed between two commits would leave a failed delivery with its budget
            # spent, and the rescued job would send it once more than the budget allows.
            session.begin()
            recorded = deliveries.record_attempt(session, delivery_id, outcome)
            number = recorded.attempt.attempt_number
            line = _outcome_fields(recorded.delivery, number)
            try:
                decided = finish(session, recorded)
            except UnhandledOutcomeError:
                session.commit()  # the attempt stays on record; the job retries
                _log_outcome(line)
                raise
            session.commit()
            _log_outcome(line)
            if recorded.delivery.status != line["status"]:
                self._log(recorded.delivery, number)
            return decided

    def _result(self, session: Session, recorded: deliveries.RecordedAttempt, job: pgqueue.Job) -> Any:
        delivery, attempt = recorded.delivery, recorded.attempt
        budget = min(job.max_attempts, DELIVERY_ATTEMPTS)
        final = job.attempt >= budget
        if attempt.outcome == "succeeded":
            return None
        if attempt.error_class in ("permanent", "bounced") and delivery.status == "cancelled":
            return None
        if delivery.status == "failed" and (attempt.error_class == "temporary" or final):
            if final:
                deliveries.exhaust_delivery(session, delivery)  # committed with the attempt
                return None
            return pgqueue.Error(f"adapter_temporary: {_summary(attempt.provider_response)}")
        raise UnhandledOutcomeError(delivery.id, attempt.outcome, attempt.error_class, job.attempt, budget)

    def _log(self, delivery: Delivery, attempt_number: int | None) -> None:
        _log_outcome(_outcome_fields(delivery, attempt_number))


def _outcome_fields(delivery: Delivery, attempt_number: int | None) -> dict[str, Any]:
    # One structured line per delivery outcome; ids and classes only, never content.
    return {
        "delivery_id": str(delivery.id),
        "channel": delivery.channel,
        "status": delivery.status,
        "suppression_reason": delivery.suppression_reason,
        "attempt_number": attempt_number,
    }


def _log_outcome(fields: dict[str, Any]) -> None:
    _log.info("delivery %s %s", fields["delivery_id"], fields["status"], extra={"fields": fields})


def _deliver(route: ChannelRoute, context: DeliveryContext) -> object:
    try:
        return route.adapter.deliver(context, route.config)
    except Exception as exc:
        # An adapter that raises is a temporary failure, recorded like any other: the contract
        # then still ends the delivery (retries, or exhaustion on the last attempt).
        return Failed("temporary", {"exception": type(exc).__name__})


def _summary(response: Mapping[str, Any] | None) -> str:
    if not response:
        return "no detail"
    return ", ".join(
        f"{k}={v}" for k, v in sorted(response.items()) if isinstance(v, str | int | float | bool)
    )[:200]


def _delivery_id(args: Mapping[str, Any]) -> uuid.UUID | None:
    value = args.get("delivery_id") if isinstance(args, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _notification_read(session: Session, delivery: Delivery) -> bool:
    read_at = session.scalar(select(Notification.read_at).where(Notification.id == delivery.notification_id))
    return read_at is not None


_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def configure(dispatcher: Dispatcher | None) -> None:
    """Install the :class:`Dispatcher` the dispatch worker uses in this process (None to clear)."""
    global _dispatcher
    with _dispatcher_lock:
        _dispatcher = dispatcher


def current_dispatcher() -> Dispatcher:
    if _dispatcher is None:
        raise ChimewayError(
            "chimeway.dispatch.configure(Dispatcher(...)) has not been called in this process"
        )
    return _dispatcher


class DispatchWorker(
    pgqueue.Worker,
    queue=QUEUE,
    max_attempts=DELIVERY_ATTEMPTS + CRASH_ALLOWANCE,
    unique={"fields": ["args"], "keys": ["delivery_id"], "period": 60},
    name="chimeway.dispatch.DispatchWorker",
):
    """Performs one delivery; see the module docstring for the contract."""

    def perform(self, job: pgqueue.Job) -> Any:
        return current_dispatcher().perform(job)

    def backoff(self, job: pgqueue.Job) -> float:
        configured = _dispatcher.retry_backoff if _dispatcher is not None else None
        return configured if configured is not None else super().backoff(job)


def dispatch_job(delivery_id: uuid.UUID | str) -> pgqueue.NewJob:
    """The unsaved dispatch job of a delivery (args: only its id, as a string)."""
    return DispatchWorker.new({"delivery_id": str(uuid.UUID(str(delivery_id)))})


def enqueue_in(session: Any, delivery_id: uuid.UUID | str, *, schema: str = "public") -> pgqueue.Job:
    """Insert the dispatch job of ``delivery_id`` in ``session``'s transaction.

    ``session`` is a SQLAlchemy ``Session`` or ``Connection`` (also the sync session inside
    ``AsyncSession.run_sync``), or a psycopg connection. Rolling back removes the job with the
    delivery; committing makes both visible and wakes the queue. ``schema`` is where the queue's
    ``jobs`` table lives.
    """
    return pgqueue.insert(session, dispatch_job(delivery_id), schema=schema)
