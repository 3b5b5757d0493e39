"""Multi-step journeys: a notification that goes out on one channel, then — after a wait, and
depending on how that went — on the next.

::

    class Onboarding(chimeway.Notifier):
        notification_key = "onboarding"
        journey = Journey("onboarding", 1, [
            Step(1, "in_app"),
            Step(2, "email", delay=3600, template=("onboarding_email", 1)),
            Step(3, "sms", delay=86400, when=["bounced", "retries_exhausted", "suppressed"]),
        ], end_on=["user_logged_in"])

A trigger starts one run per notification (:mod:`chimeway.journeys.start`); each run walks the
steps through the same planner and dispatch batches as any delivery (:mod:`chimeway.journeys.runs`,
:mod:`chimeway.journeys.workers`), its moves made in batches with other runs'
(:mod:`chimeway.journeys.moves`), with an append-only transition log; :func:`signal` ends or
advances runs. The worker process runs the journey's jobs on the dispatch queue.
"""

from __future__ import annotations

from .definition import BUILTIN_CHANNELS, CONDITIONS, Condition, Journey, JourneyError, Step
from .runs import outcome_of
from .start import SignalResult, asignal, signal
from .workers import JourneyDispatchWorker, JourneyWorker

__all__ = [
    "BUILTIN_CHANNELS",
    "CONDITIONS",
    "Condition",
    "Journey",
    "JourneyDispatchWorker",
    "JourneyError",
    "JourneyWorker",
    "SignalResult",
    "Step",
    "asignal",
    "outcome_of",
    "signal",
]
