"""What a waiting workflow step waits for, in words, for the dashboard.

A step that waits is stored ``scheduled`` at :data:`pgqueue.workflow.PARKED` (year 9999); the
dashboard shows "waiting on 2 dependencies · signal approved" instead of that date. A step
waiting for a signal with a timeout is ``scheduled`` at its deadline once nothing else holds it:
it shows "waiting signal approved (until ...)", since the signal may release it sooner.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..workflow import PARKED

__all__ = ["describe", "is_parked", "may_wait"]


def is_parked(state: str, scheduled_at: datetime) -> bool:
    """True for a job parked until something releases it (never due by the clock)."""
    return state == "scheduled" and scheduled_at >= PARKED


def may_wait(state: str, attempted_at: datetime | None) -> bool:
    """True for a job a workflow may be holding: scheduled and never attempted."""
    return state == "scheduled" and attempted_at is None


def _at(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def describe(row: Sequence[Any], parked: bool) -> str | None:
    """``row`` as web_workflow_waits.sql reads it (job_id, pending, signal, signalled_at,
    signal_deadline, not_before) in words: "waiting on 3 dependencies · signal approved"; for a
    job scheduled at a real time (not ``parked``), only a signal that may release it sooner, else
    None (its time says it all)."""
    _, pending, signal, signalled_at, deadline, not_before = row
    awaiting = signal is not None and signalled_at is None
    if not parked:
        return f"waiting signal {signal} (until {_at(deadline)})" if awaiting and deadline else None
    parts: list[str] = []
    if pending:
        parts.append(f"on {pending} dependenc{'y' if pending == 1 else 'ies'}")
    if awaiting:
        parts.append(f"signal {signal}" + (f" (until {_at(deadline)})" if deadline is not None else ""))
    if not_before is not None:
        parts.append(f"not before {_at(not_before)}")
    return "waiting " + " · ".join(parts) if parts else "waiting"
