"""One event loop's dispatch batcher: many jobs, two statements.

The producer starts the jobs of one fetch together, in one turn of the event loop. Each job's
``perform`` hands its delivery here and waits for its result; the first hand-in of a turn schedules
a flush at the end of that turn (``loop.call_soon``), so every delivery handed in meanwhile is
claimed by one statement (:func:`~chimeway.dispatch.records.claim`). Ready deliveries go to their
adapters at once, all concurrently, outside any transaction: async adapters as tasks on this loop,
sync ones in worker threads (bounded). As each finishes it queues its attempt for the record
statement, which goes out when no adapter call is left running (or after ``record_delay``, or as
soon as ``batch_size`` wait), so a batch of fast calls is recorded by one statement and a slow call
does not hold the others' records back.

Two jobs of one delivery never run side by side here: the second waits until the first has
settled, then is claimed and finds the delivery as the first left it (usually ended: no second send).

The batch, not the job, owns the work: once a delivery is claimed its adapter call and its record
run to the end even if the job waiting for them is cancelled (a timeout, a cancel, a shutdown past
the grace period), so a cancelled job never leaves a delivery ``dispatched`` with a send and no
attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import anyio

from pgqueue.lifecycle import describe_error

from .. import telemetry
from ..adapters.base import Classification, DeliveryContext, Failed, classify
from ..errors import ChimewayError, DeliveryNotFound
from ..states import Reason
from .contract import Route, deferral, job_result, log_outcome, not_found
from .records import Claim, Recorded, RecordItem

__all__ = ["BatchHost", "Batcher", "DispatchError", "Pending"]


class BatchHost(Protocol):
    """What a :class:`Batcher` needs of its dispatcher (:class:`chimeway.dispatch.Dispatcher`)."""

    batch_size: int
    record_delay: float
    thread_limit: int

    def route_for(self, channel: str) -> Route: ...

    async def claim_batch(self, ids: Sequence[str]) -> dict[uuid.UUID, Claim]: ...

    async def call_adapter(
        self, route: Route, context: DeliveryContext, threads: anyio.CapacityLimiter
    ) -> object: ...

    async def record_batch(
        self, items: Sequence[RecordItem]
    ) -> dict[uuid.UUID, Recorded | BaseException]: ...


_RECORD = ("chimeway", "attempts", "record")


class DispatchError(ChimewayError):
    """The database part of a dispatch batch failed (connection lost, …); the job will be retried."""


class Pending:
    """One job's delivery, from hand-in to the job's result."""

    __slots__ = (
        "attempt",
        "budget",
        "classification",
        "context",
        "delivery_id",
        "future",
        "key",
        "route",
    )

    def __init__(
        self, delivery_id: uuid.UUID, key: str, attempt: int, budget: int, future: asyncio.Future[Any]
    ) -> None:
        self.delivery_id = delivery_id
        #: the id's canonical text, for the claim statement
        self.key = key
        self.attempt = attempt
        self.budget = budget
        self.future = future
        self.context: DeliveryContext | None = None
        self.route: Route | None = None
        self.classification: Classification | None = None

    @property
    def final(self) -> bool:
        return self.attempt >= self.budget

    def resolve(self, value: Any) -> None:
        if not self.future.done():  # its job may have been cancelled while it waited
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher:
    """Collects deliveries handed in on one event loop into claim and record batches."""

    def __init__(self, dispatcher: BatchHost, loop: asyncio.AbstractEventLoop) -> None:
        self.dispatcher = dispatcher
        self.loop = loop
        self.threads = anyio.CapacityLimiter(dispatcher.thread_limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self._claims: list[Pending] = []
        self._claim_soon: asyncio.Handle | None = None
        self._records: list[Pending] = []
        self._record_soon: asyncio.Handle | None = None
        self._record_later: asyncio.TimerHandle | None = None
        self._sending = 0
        # Deliveries claimed and not yet settled here, and jobs of those deliveries waiting for
        # them: a second job of a delivery runs after the first has settled, so it sees the end.
        self._active: set[uuid.UUID] = set()
        self._held: dict[uuid.UUID, deque[Pending]] = {}

    # -- claims ------------------------------------------------------------------------------------

    def submit(self, pending: Pending) -> None:
        self._claims.append(pending)
        if len(self._claims) >= self.dispatcher.batch_size:
            self._flush_claims()
        elif self._claim_soon is None:
            self._claim_soon = self.loop.call_soon(self._flush_claims)

    def _flush_claims(self) -> None:
        if self._claim_soon is not None:
            self._claim_soon.cancel()
            self._claim_soon = None
        batch: list[Pending] = []
        for pending in self._claims:
            if pending.delivery_id in self._active:
                self._held.setdefault(pending.delivery_id, deque()).append(pending)
            else:
                self._active.add(pending.delivery_id)
                batch.append(pending)
        self._claims = []
        if batch:
            self._spawn(self._run_claims(batch))

    def _settle(self, pending: Pending, value: Any = None, error: BaseException | None = None) -> None:
        """The end of one delivery's run here: the job gets its result, a held repeat its turn."""
        if error is not None:
            pending.fail(error)
        else:
            pending.resolve(value)
        self._active.discard(pending.delivery_id)
        waiting = self._held.get(pending.delivery_id)
        if waiting:
            self.submit(waiting.popleft())
            if not waiting:
                del self._held[pending.delivery_id]

    async def _run_claims(self, batch: list[Pending]) -> None:
        try:
            claims = await self.dispatcher.claim_batch([p.key for p in batch])
        except BaseException as exc:
            self._fail_all(batch, "claiming", exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending in batch:
            found = claims.get(pending.delivery_id)
            if found is None:
                self._settle(pending, not_found(pending.delivery_id))
            elif found.kind in ("ready", "undecodable"):
                self._send(pending, found)
            elif found.kind == "suppressed":
                log_outcome(pending.delivery_id, found.channel, "suppressed", found.reason, None)
                self._settle(pending)
            elif found.kind == "deferred":
                log_outcome(pending.delivery_id, found.channel, "deferred", None, None)
                self._settle(pending, deferral(found.wait))
            else:
                self._settle(pending)

    # -- adapter calls -------------------------------------------------------------------------------

    def _send(self, pending: Pending, found: Claim) -> None:
        assert found.context is not None
        pending.context = found.context
        pending.route = route = self.dispatcher.route_for(found.context.channel)
        if found.kind == "undecodable":
            failure = Failed("permanent", {"error": "undecodable_notification_metadata"})
            pending.classification = classify(failure)
            self._queue_record(pending)
            return
        self._sending += 1
        self._spawn(self._call(pending, found.context, route))

    async def _call(self, pending: Pending, context: DeliveryContext, route: Route) -> None:
        try:
            result = await self.dispatcher.call_adapter(route, context, self.threads)
        except BaseException as exc:
            # Only cancellation gets here (the dispatcher closing past its deadline): whether the
            # provider got it is unknown, so nothing is recorded; the delivery stays dispatched and
            # its job, still executing, is rerun by the lifeline under the same idempotency key.
            self._sending -= 1
            self._fail_all([pending], "sending", exc)
            raise
        self._sending -= 1
        pending.classification = classify(result)
        self._queue_record(pending)

    # -- records -------------------------------------------------------------------------------------

    def _queue_record(self, pending: Pending) -> None:
        self._records.append(pending)
        if len(self._records) >= self.dispatcher.batch_size:
            self._flush_records()
        elif self._sending == 0:
            if self._record_soon is None:
                self._record_soon = self.loop.call_soon(self._flush_records)
        elif self._record_later is None and self._record_soon is None:
            self._record_later = self.loop.call_later(self.dispatcher.record_delay, self._flush_records)

    def _flush_records(self) -> None:
        for handle in (self._record_soon, self._record_later):
            if handle is not None:
                handle.cancel()
        self._record_soon = self._record_later = None
        batch, self._records = self._records, []
        if batch:
            self._spawn(self._run_records(batch))

    async def _run_records(self, batch: list[Pending]) -> None:
        items = [_record_item(p) for p in batch]
        observed = telemetry.has_handlers()
        started = time.monotonic_ns()
        if observed:
            for p in batch:
                telemetry.emit(
                    (*_RECORD, "start"), {"system_time": time.time_ns()}, {"delivery_id": p.delivery_id}
                )
        try:
            results = await self.dispatcher.record_batch(items)
        except BaseException as exc:
            if observed:
                for p in batch:
                    measurements = {"duration": time.monotonic_ns() - started}
                    telemetry.emit((*_RECORD, "exception"), measurements, {"delivery_id": p.delivery_id})
            self._fail_all(batch, "recording", exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending, item in zip(batch, items, strict=True):
            result = results.get(pending.delivery_id)
            if isinstance(result, Recorded):
                self._finish(pending, item, result, started if observed else None)
            elif isinstance(result, DeliveryNotFound):
                self._settle(pending, not_found(pending.delivery_id))
            elif isinstance(result, BaseException):
                self._settle(pending, error=result)
            else:
                missing = DispatchError(f"delivery {pending.delivery_id}: no record was written")
                self._settle(pending, error=missing)

    def _finish(self, pending: Pending, item: RecordItem, recorded: Recorded, started: int | None) -> None:
        exhausted = recorded.suppression_reason == Reason.RETRIES_EXHAUSTED and item.final
        channel = pending.context.channel if pending.context is not None else ""
        # The one-at-a-time path logs the attempt's own ending, then the exhaustion it decided.
        log_outcome(
            pending.delivery_id,
            channel,
            "failed" if exhausted else recorded.status,
            None if exhausted else recorded.suppression_reason,
            recorded.attempt_number,
        )
        if exhausted:
            log_outcome(
                pending.delivery_id,
                channel,
                recorded.status,
                recorded.suppression_reason,
                recorded.attempt_number,
            )
        if started is not None:
            telemetry.emit(
                (*_RECORD, "stop"),
                {"duration": time.monotonic_ns() - started},
                {
                    "delivery_id": pending.delivery_id,
                    "attempt_id": recorded.attempt_id,
                    "attempt_number": recorded.attempt_number,
                    "outcome": item.outcome,
                    "error_class": item.error_class,
                    "channel": channel,
                    "adapter_module": item.adapter,
                    "suppression_reason": None if exhausted else recorded.suppression_reason,
                },
            )
        try:
            value = job_result(
                pending.delivery_id,
                item.outcome,
                item.error_class,
                item.response,
                exhausted,
                pending.attempt,
                pending.budget,
            )
        except Exception as exc:
            self._settle(pending, error=exc)
            return
        self._settle(pending, value)

    def _fail_all(self, batch: list[Pending], step: str, exc: BaseException) -> None:
        """Fail each job of ``batch`` with the error its batch hit: a copy of its own for each (one
        exception raised in many tasks would gather all their tracebacks), caused by the original."""
        for pending in batch:
            error: BaseException
            if isinstance(exc, Exception):
                try:
                    error = copy.copy(exc)
                except Exception:
                    error = DispatchError(
                        f"delivery {pending.delivery_id}: {step} failed ({describe_error(exc)})"
                    )
            else:
                error = DispatchError(f"delivery {pending.delivery_id}: stopped while {step}")
            error.__cause__ = exc
            self._settle(pending, error=error)

    # -- tasks ---------------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait_idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every batch in flight to finish; cancel the rest."""
        deadline = time.monotonic() + timeout
        while self.tasks or self._claims or self._records or self._held:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=left)
            else:
                await asyncio.sleep(0)
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task


def _record_item(pending: Pending) -> RecordItem:
    classification = pending.classification
    route = pending.route
    assert classification is not None
    assert route is not None
    return RecordItem(
        pending.delivery_id,
        classification.outcome,
        classification.error_class,
        classification.provider_response,
        classification.provider_message_id,
        route.name,
        pending.final,
    )
