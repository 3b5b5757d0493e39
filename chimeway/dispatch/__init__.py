"""The dispatch worker: performs deliveries, by ``delivery_id``, under Chimeway's retry contract.

Job args hold only ``delivery_id``; the delivery row is the truth. For each delivery:

1. A missing delivery or a malformed id cancels the job (retrying can't help).
2. A delivery that has ended (succeeded, suppressed, cancelled) or isn't ready → success, with no
   adapter call and no attempt row.
3. The perform checkpoint (:mod:`chimeway.policy`): a fallback delivery whose notification was
   read meanwhile → suppressed (``already_read``); a channel or category the recipient turned off
   → suppressed (``channel_disabled``, ``category_disabled``); within the recipient's quiet hours →
   deferred until they end, and the job snoozed until then (that run releases it); no room under
   the recipient's cap → suppressed (``delivery_cap_reached``). Suppressed → success.
4. Mark it dispatched and commit: no transaction stays open while the adapter runs.
5. Call the channel's adapter within its deadline (an exception or a timeout counts as a
   temporary failure).
6. Record the attempt: row lock, contiguous attempt number, state change, in one transaction.
7. Map the recorded outcome to the job's result, in the same transaction as step 6:

   * delivered → success;
   * permanent or bounced → success (the delivery is already cancelled with its reason);
   * temporary with attempts left → failure, so the queue retries it with its backoff;
   * temporary on the final attempt (attempt :data:`DELIVERY_ATTEMPTS`, 5) → exhausted
     (cancelled, ``retries_exhausted``), then success: the job ends ``completed``, not
     ``discarded``, and the delivery row holds the explanation;
   * an unclassifiable result → :class:`UnhandledOutcomeError` (retried), or exhausted when it
     happens on the final attempt.

The contract is per delivery; the work is done in batches. Under the queue
(:class:`DispatchWorker`), the jobs a producer starts together are claimed by one statement
(steps 1 to 4 for all of them), their adapters run concurrently, and one statement records them
(steps 6 and 7): about three statements for a batch of a hundred, the job acks included, which ride on
the producer's next fetch. See :mod:`chimeway.dispatch.batcher` and the two statements in
``chimeway/queries/dispatch_*.sql``. :meth:`Dispatcher.deliver_now` does the same for one delivery
through :mod:`chimeway.deliveries`, the contract's one-at-a-time form; the two agree row for row.

The job itself may run up to :data:`CRASH_ALLOWANCE` times more than the delivery's budget; those
runs only happen when a run on or after the final attempt ended without reaching step 7 (a killed
worker, or the database gone mid-run): see :data:`CRASH_ALLOWANCE`.
"""

from __future__ import annotations

from .batcher import DispatchError
from .contract import CRASH_ALLOWANCE, DELIVERY_ATTEMPTS, QUEUE, ChannelRoute, UnhandledOutcomeError
from .dispatcher import DEFAULT_ATTEMPT_TIMEOUT, Dispatcher
from .worker import (
    DispatchWorker,
    PacedDispatchWorker,
    aenqueue_in,
    configure,
    current_dispatcher,
    dispatch_job,
    enqueue_in,
    paced_job,
)

__all__ = [
    "CRASH_ALLOWANCE",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DELIVERY_ATTEMPTS",
    "QUEUE",
    "ChannelRoute",
    "DispatchError",
    "DispatchWorker",
    "Dispatcher",
    "PacedDispatchWorker",
    "UnhandledOutcomeError",
    "aenqueue_in",
    "configure",
    "current_dispatcher",
    "dispatch_job",
    "enqueue_in",
    "paced_job",
]
