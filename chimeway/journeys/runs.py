"""How a run moves, from rows alone: the decisions, with no I/O (:mod:`chimeway.journeys.moves`
runs them, for many runs per transaction).

A run's job asks for one move of the run for one of its steps (:func:`walk`); under the run's row
lock:

* a run that has ended, or has moved past the job's step, is left alone (a job of a move already
  made: after a crash, or a signal that moved it first);
* ``waiting`` before its time → the job is snoozed until then;
* ``waiting`` and due → the step's condition is checked against the outcome of the step it looks
  at; unmet → the step is ``skipped``; met → its delivery is planned (pending with a dispatch job,
  or suppressed at planning), in the same transaction;
* ``sending`` → the step's delivery's outcome is read; not settled yet → nothing (the dispatch
  job moves the run when it is); settled → the outcome is stored and the run moves on.

Moving on ends the run (``completed``) after the last step, stops it (``ended``, ``read``) when
the notification was read and the journey stops when read, or waits for the next step: a
pgqueue job scheduled for the end of its wait, inserted in the same transaction. A step whose
wait is already over is taken in the same transaction. Every move appends a transition.

A delivery, a job and the run's move commit together or not at all, and each move checks the
state it starts from, so a worker killed anywhere emits no step twice and loses none: the job is
rescued and re-runs the move, or finds it made.

:func:`walk` is a generator: it yields each delivery it plans (:class:`Emit`) and is sent back
what planning made of it (status and reason, or None when the notification already has a
delivery on that channel), so the planning of many runs' steps is one statement. Moves, the
transitions and the jobs to insert accumulate on the :class:`Move`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import pgqueue

from .definition import Step

__all__ = ["Emit", "JobFactories", "Move", "Transition", "Walk", "outcome_of", "walk"]


class JobFactories(NamedTuple):
    """How a move makes the jobs it inserts: a step's job after its wait, a delivery's dispatch."""

    step_job: Callable[[uuid.UUID, int, float], pgqueue.NewJob]
    dispatch_job: Callable[[uuid.UUID, uuid.UUID, int], pgqueue.NewJob]


class Emit(NamedTuple):
    """A step's delivery to plan (``journey_emit.sql``)."""

    delivery_id: uuid.UUID
    run_id: uuid.UUID
    step: int
    channel: str
    render_key: str | None
    render_version: int | None


class Transition(NamedTuple):
    """One line of a run's transition log."""

    run_id: uuid.UUID
    step: int
    delivery_id: uuid.UUID | None
    from_state: str
    to_state: str
    reason: str
    context: str


#: what planning made of an :class:`Emit`: (status, suppression reason), or None (channel taken)
Emitted = tuple[str, str | None] | None
#: a move in progress: yields the deliveries it plans, returns the job's result
Walk = Generator[Emit, Emitted, Any]

_CANCELLED: Final = {
    "bounced": "bounced",
    "permanent_failure": "permanent_failure",
    "retries_exhausted": "retries_exhausted",
}


def outcome_of(status: str, reason: str | None) -> str | None:
    """A step's outcome from its delivery's status, or None while it is still on its way."""
    if status == "succeeded":
        return "delivered"
    if status == "suppressed":
        return "suppressed"
    if status == "cancelled":
        return _CANCELLED.get(reason or "", "cancelled")
    if status == "failed":
        return "temporary_failure"
    return None


class Move:
    """A locked run (a row of ``journey_lock_runs.sql``) and what this transaction does to it."""

    def __init__(self, run_id: uuid.UUID, row: Sequence[Any], jobs: JobFactories) -> None:
        (
            state,
            current,
            outcomes,
            wait,
            steps,
            stop_when_read,
            read,
            payload,
            d_id,
            d_status,
            d_reason,
            now,
        ) = row
        self.run_id = run_id
        self.jobs = jobs
        self.state: str = state
        self.current: int = current
        self.outcomes: dict[str, str] = json.loads(outcomes)
        self.wait: float = float(wait or 0.0)
        self.steps = [Step.from_json(s) for s in json.loads(steps)]
        self.stop_when_read: bool = stop_when_read
        self.read: bool = read
        self.payload: Mapping[str, Any] = json.loads(payload)
        self.delivery = (d_id, d_status, d_reason) if d_id is not None else None
        self.now: datetime = now
        #: what the run's row becomes (its last move's due_in and terminal reason)
        self.due_in = 0.0
        self.terminal_reason: str | None = None
        self.log: list[Transition] = []
        self.new_jobs: list[pgqueue.NewJob] = []

    def step(self, order: int) -> Step:
        return next(s for s in self.steps if s.order == order)

    def next_step(self, order: int) -> Step | None:
        return next((s for s in self.steps if s.order > order), None)

    def looked_at(self, step: Step) -> str | None:
        """The outcome the step's condition is about: its ``after`` step's, else the previous one's."""
        if step.after is not None:
            target = next(s for s in self.steps if s.name == step.after)
        else:
            earlier = [s for s in self.steps if s.order < step.order]
            if not earlier:
                return None
            target = earlier[-1]
        return self.outcomes.get(str(target.order))

    def due_in_for(self, step: Step) -> tuple[float, str | None]:
        """Seconds until ``step`` may go (its delay, and its wait_until timestamp), and an error
        when the timestamp in the trigger params is unusable."""
        due = float(step.delay)
        if step.wait_until is not None:
            raw = self.payload.get(step.wait_until)
            try:
                at = datetime.fromisoformat(str(raw))
                if at.tzinfo is None:
                    raise ValueError("no offset")
            except (TypeError, ValueError):
                return (
                    0.0,
                    f"wait_until: params[{step.wait_until!r}] is not an ISO 8601 time with an offset: "
                    f"{raw!r}",
                )
            due = max(due, (at - self.now).total_seconds())
        return max(due, 0.0), None

    def record(
        self,
        *,
        to_state: str,
        step: int,
        reason: str,
        due_in: float = 0.0,
        terminal_reason: str | None = None,
        delivery_id: uuid.UUID | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """One move: the run's new state and its line in the transition log."""
        self.log.append(
            Transition(
                self.run_id, step, delivery_id, self.state, to_state, reason, json.dumps(context or {})
            )
        )
        self.state = to_state
        self.current = step
        self.due_in = self.wait = due_in
        self.terminal_reason = terminal_reason


def walk(move: Move, step: int) -> Walk:
    """One move of the run for its step ``step``; returns the job's result."""
    if move.state in ("completed", "ended") or move.current != step:
        return None
    if move.state == "sending":
        if not _settle(move):
            return None
    elif move.wait > 0:
        return pgqueue.Snooze(move.wait + 0.05)
    yield from _take_due_steps(move)
    return None


def _settle(move: Move) -> bool:
    """Store the sending step's outcome if it is known; False while it isn't (or when only a
    temporary failure is known and the next step doesn't ask for one)."""
    if move.delivery is None:
        return False
    delivery_id, status, reason = move.delivery
    outcome = outcome_of(status, reason)
    if outcome is None:
        return False
    if outcome == "temporary_failure":
        following = move.next_step(move.current)
        if following is None or "temporary_failure" not in following.when:
            return False
    move.outcomes[str(move.current)] = outcome
    move.record(
        to_state="waiting",
        step=move.current,
        reason="step_settled",
        delivery_id=delivery_id,
        context={"outcome": outcome},
    )
    return _to_next(move)


def _to_next(move: Move) -> bool:
    """Move past the current step: complete the run, or wait for the next step. True when the
    next step is due now (the caller takes it in this transaction)."""
    following = move.next_step(move.current)
    if following is None:
        move.record(to_state="completed", step=move.current, reason="completed", terminal_reason="completed")
        return False
    due_in, error = move.due_in_for(following)
    if error is not None:
        move.record(
            to_state="ended",
            step=following.order,
            reason="invalid_wait",
            terminal_reason="invalid_wait",
            context={"error": error},
        )
        return False
    move.record(
        to_state="waiting",
        step=following.order,
        reason="waiting",
        due_in=due_in,
        context={"due_in": round(due_in, 3)},
    )
    if due_in > 0:
        move.new_jobs.append(move.jobs.step_job(move.run_id, following.order, due_in))
        return False
    return True


def _take_due_steps(move: Move) -> Walk:
    """Take the current step (its wait is over), and every following one that is due at once."""
    while move.state == "waiting":
        step = move.step(move.current)
        if move.stop_when_read and move.read:
            move.record(to_state="ended", step=step.order, reason="read", terminal_reason="read")
            return
        looked_at = move.looked_at(step)
        if step.when and looked_at not in step.when:
            move.outcomes[str(step.order)] = "skipped"
            move.record(
                to_state="waiting",
                step=step.order,
                reason="step_skipped",
                context={"looked_at": looked_at, "when": sorted(step.when)},
            )
            if not _to_next(move):
                return
            continue
        delivery_id = uuid.uuid4()
        template = step.template
        emitted = yield Emit(
            delivery_id,
            move.run_id,
            step.order,
            step.channel,
            template[0] if template else None,
            template[1] if template else None,
        )
        if emitted is None:
            # The planner's key: this notification already has a delivery on the channel, made
            # outside the journey.
            move.record(
                to_state="ended",
                step=step.order,
                reason="channel_taken",
                terminal_reason="channel_taken",
                context={"channel": step.channel},
            )
            return
        status, reason = emitted
        move.record(
            to_state="sending",
            step=step.order,
            reason="step_emitted",
            delivery_id=delivery_id,
            context={"channel": step.channel, "status": status},
        )
        move.delivery = (delivery_id, status, reason)
        if status == "pending":
            move.new_jobs.append(move.jobs.dispatch_job(delivery_id, move.run_id, step.order))
            return
        if not _settle(move):
            return
