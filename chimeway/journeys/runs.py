"""How a run moves: one transaction per move, under the run's row lock, from rows alone.

:func:`advance` is what a run's job does. It locks the run, and:

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
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import psycopg

import pgqueue

from ..store import Queries
from .definition import Step

__all__ = ["JobFactories", "advance", "outcome_of"]


class JobFactories(NamedTuple):
    """How a move makes the jobs it inserts: a step's job after its wait, a delivery's dispatch."""

    step_job: Callable[[uuid.UUID, int, float], pgqueue.NewJob]
    dispatch_job: Callable[[uuid.UUID, uuid.UUID, int], pgqueue.NewJob]


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


class _Move:
    """The locked run and what this transaction does to it."""

    def __init__(self, run_id: uuid.UUID, row: Sequence[Any], queue_schema: str, jobs: JobFactories) -> None:
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
        self.queue_schema = queue_schema
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

    def due_in(self, step: Step) -> tuple[float, str | None]:
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


async def _log(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    move: _Move,
    *,
    to_state: str,
    step: int,
    reason: str,
    from_state: str | None = None,
    log_step: int | None = None,
    due_in: float = 0.0,
    terminal_reason: str | None = None,
    delivery_id: uuid.UUID | None = None,
    context: Mapping[str, Any] | None = None,
) -> None:
    await conn.execute(
        queries.journey_move,
        {
            "run_id": move.run_id,
            "to_state": to_state,
            "from_state": from_state if from_state is not None else move.state,
            "step": step,
            "log_step": log_step if log_step is not None else step,
            "outcomes": json.dumps(move.outcomes),
            "due_in": due_in,
            "terminal_reason": terminal_reason,
            "delivery_id": delivery_id,
            "reason": reason,
            "context": json.dumps(context or {}),
        },
    )
    move.state = to_state
    move.current = step


async def advance(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    run_id: uuid.UUID,
    step: int,
    *,
    queue_schema: str,
    jobs: JobFactories,
) -> Any:
    """One move of run ``run_id`` for its step ``step``; returns the job's result. ``conn`` is in
    autocommit: the move is one transaction of its own."""
    async with conn.transaction():
        cursor = await conn.execute(queries.journey_lock_run, {"run_id": run_id})
        row = await cursor.fetchone()
        if row is None:
            return pgqueue.Cancel(f"journey run {run_id} not found")
        move = _Move(run_id, row, queue_schema, jobs)
        if move.state in ("completed", "ended") or move.current != step:
            return None
        if move.state == "sending":
            if not await _settle(conn, queries, move):
                return None
        elif move.wait > 0:
            return pgqueue.Snooze(move.wait + 0.05)
        await _take_due_steps(conn, queries, move)
    return None


async def _settle(conn: psycopg.AsyncConnection[Any], queries: Queries, move: _Move) -> bool:
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
    await _log(
        conn,
        queries,
        move,
        to_state="waiting",
        step=move.current,
        reason="step_settled",
        delivery_id=delivery_id,
        context={"outcome": outcome},
    )
    return await _to_next(conn, queries, move)


async def _to_next(conn: psycopg.AsyncConnection[Any], queries: Queries, move: _Move) -> bool:
    """Move past the current step: complete the run, or wait for the next step. True when the
    next step is due now (the caller takes it in this transaction)."""
    following = move.next_step(move.current)
    if following is None:
        await _log(
            conn,
            queries,
            move,
            to_state="completed",
            step=move.current,
            reason="completed",
            terminal_reason="completed",
        )
        return False
    due_in, error = move.due_in(following)
    if error is not None:
        await _log(
            conn,
            queries,
            move,
            to_state="ended",
            step=following.order,
            reason="invalid_wait",
            terminal_reason="invalid_wait",
            context={"error": error},
        )
        return False
    await _log(
        conn,
        queries,
        move,
        to_state="waiting",
        step=following.order,
        reason="waiting",
        due_in=due_in,
        context={"due_in": round(due_in, 3)},
    )
    if due_in > 0:
        job = move.jobs.step_job(move.run_id, following.order, due_in)
        await pgqueue.ainsert(conn, job, schema=move.queue_schema)
        return False
    return True


async def _take_due_steps(conn: psycopg.AsyncConnection[Any], queries: Queries, move: _Move) -> None:
    """Take the current step (its wait is over), and every following one that is due at once."""
    while move.state == "waiting":
        step = move.step(move.current)
        if move.stop_when_read and move.read:
            await _log(
                conn, queries, move, to_state="ended", step=step.order, reason="read", terminal_reason="read"
            )
            return
        looked_at = move.looked_at(step)
        if step.when and looked_at not in step.when:
            move.outcomes[str(step.order)] = "skipped"
            await _log(
                conn,
                queries,
                move,
                to_state="waiting",
                step=step.order,
                reason="step_skipped",
                context={"looked_at": looked_at, "when": sorted(step.when)},
            )
            if not await _to_next(conn, queries, move):
                return
            continue
        delivery_id = uuid.uuid4()
        cursor = await conn.execute(
            queries.journey_emit,
            {
                "id": delivery_id,
                "run_id": move.run_id,
                "step": step.order,
                "channel": step.channel,
                "render_key": step.template[0] if step.template else None,
                "render_version": step.template[1] if step.template else None,
            },
        )
        emitted = await cursor.fetchone()
        if emitted is None:
            # The planner's key: this notification already has a delivery on the channel, made
            # outside the journey.
            await _log(
                conn,
                queries,
                move,
                to_state="ended",
                step=step.order,
                reason="channel_taken",
                terminal_reason="channel_taken",
                context={"channel": step.channel},
            )
            return
        _, status, reason = emitted
        await _log(
            conn,
            queries,
            move,
            to_state="sending",
            step=step.order,
            reason="step_emitted",
            delivery_id=delivery_id,
            context={"channel": step.channel, "status": status},
        )
        if status == "pending":
            job = move.jobs.dispatch_job(delivery_id, move.run_id, step.order)
            await pgqueue.ainsert(conn, job, schema=move.queue_schema)
            return
        move.delivery = (delivery_id, status, reason)
        if not await _settle(conn, queries, move):
            return
