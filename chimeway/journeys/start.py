"""Starting runs (from a trigger, in its transaction) and signals (application events).

A trigger of a notifier that declares a journey plans no delivery itself: it stores the
definition (once per key and version), starts one run per notification, and schedules each run's
first step job, all in the caller's transaction. Each step's delivery is then planned by the run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.drivers import AsyncWriter, SyncWriter
from pgqueue.targets import async_writer, sync_writer

from .._session import mapped_schema
from ..store import Queries, queries_for
from .definition import Journey, JourneyError
from .workers import step_job

__all__ = ["SignalResult", "Start", "asignal", "signal"]


@dataclass
class Start:
    """One trigger's runs: what the statements need, built before any I/O."""

    journey: Journey
    notification_key: str
    params: Mapping[str, Any]
    run_ids: list[uuid.UUID] = field(default_factory=list)

    def definition_params(self) -> dict[str, Any]:
        journey = self.journey
        return {
            "key": journey.key,
            "version": journey.version,
            "notification_key": self.notification_key,
            "steps": journey.steps_json(),
            "end_on": sorted(journey.end_on),
            "advance_on": sorted(journey.advance_on),
            "stop_when_read": journey.stop_when_read,
        }

    def check_stored(self, row: Sequence[Any]) -> Any:
        """The stored definition's id, once it is the same as ours (else JourneyError)."""
        journey = self.journey
        stored = (row[1], json.loads(row[2]), sorted(row[3]), sorted(row[4]), bool(row[5]))
        ours = self.definition_params()
        wanted = (
            self.notification_key,
            json.loads(ours["steps"]),
            ours["end_on"],
            ours["advance_on"],
            journey.stop_when_read,
        )
        if stored != wanted:
            raise JourneyError(
                f"journey {journey.key!r} version {journey.version} is already stored with a different "
                "definition (or for another notifier); give the changed journey a new version"
            )
        return row[0]

    def first_due_in(self) -> float:
        first = self.journey.ordered[0]
        due = float(first.delay)
        if first.wait_until is not None:
            raw = self.params.get(first.wait_until)
            try:
                at = datetime.fromisoformat(str(raw))
                if at.tzinfo is None:
                    raise ValueError("no offset")
            except (TypeError, ValueError):
                raise JourneyError(
                    f"journey {self.journey.key!r} step {first.order}: wait_until names params"
                    f"[{first.wait_until!r}], which must be an ISO 8601 time with an offset, got {raw!r}"
                ) from None
            due = max(due, (at - datetime.now(UTC)).total_seconds())
        return max(due, 0.0)

    def start_params(
        self, definition_id: Any, notification_ids: Sequence[int], identities: Sequence[str]
    ) -> dict[str, Any]:
        self.run_ids = [uuid.uuid4() for _ in notification_ids]
        return {
            "definition_id": definition_id,
            "step": self.journey.ordered[0].order,
            "due_in": self.first_due_in(),
            "ids": [str(r) for r in self.run_ids],
            "notification_ids": [str(uuid.UUID(int=n)) for n in notification_ids],
            "recipients": list(identities),
        }

    def jobs(self) -> list[pgqueue.NewJob]:
        order, due_in = self.journey.ordered[0].order, self.first_due_in()
        return [step_job(run_id, order, due_in) for run_id in self.run_ids]


def start_runs(
    writer: SyncWriter,
    queries: Queries,
    start: Start,
    notification_ids: Sequence[int],
    identities: Sequence[str],
    session: Session,
    queue_schema: str,
) -> None:
    """Store the definition, start the runs and schedule their first step, in the caller's transaction."""
    rows = writer.execute(queries.journey_define, start.definition_params())
    if not rows:  # a concurrent first insert committed after this statement's snapshot
        rows = writer.execute(queries.journey_define, start.definition_params())
    definition_id = start.check_stored(rows[0])
    if not notification_ids:
        return
    writer.execute(queries.journey_start, start.start_params(definition_id, notification_ids, identities))
    pgqueue.insert_all(session, start.jobs(), schema=queue_schema)


async def astart_runs(
    writer: AsyncWriter,
    queries: Queries,
    start: Start,
    notification_ids: Sequence[int],
    identities: Sequence[str],
    session: AsyncSession,
    queue_schema: str,
) -> None:
    """The async twin of :func:`start_runs`."""
    rows = await writer.execute(queries.journey_define, start.definition_params())
    if not rows:
        rows = await writer.execute(queries.journey_define, start.definition_params())
    definition_id = start.check_stored(rows[0])
    if not notification_ids:
        return
    await writer.execute(
        queries.journey_start, start.start_params(definition_id, notification_ids, identities)
    )
    await pgqueue.ainsert_all(session, start.jobs(), schema=queue_schema)


@dataclass(frozen=True, slots=True)
class SignalResult:
    """The runs a signal ended, and those whose wait it ended (their step is scheduled now)."""

    ended: Sequence[uuid.UUID] = ()
    advanced: Sequence[uuid.UUID] = ()


def _check_signal(recipient: object, event: object) -> None:
    for name, value in (("recipient", recipient), ("event", event)):
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise JourneyError(f"signal: {name} must be a non-blank string, got {value!r}")


def _result(rows: Sequence[Sequence[Any]]) -> tuple[SignalResult, list[pgqueue.NewJob]]:
    ended = [uuid.UUID(str(r[0])) for r in rows if r[2]]
    advanced = [(uuid.UUID(str(r[0])), int(r[1])) for r in rows if not r[2]]
    jobs = [step_job(run_id, step, 0.0) for run_id, step in advanced]
    return SignalResult(ended, [run_id for run_id, _ in advanced]), jobs


def signal(session: Session, recipient: str, event: str, *, queue_schema: str = "public") -> SignalResult:
    """Apply the application event ``event`` (e.g. ``"user_logged_in"``) to ``recipient``'s runs
    that are still going, in ``session``'s transaction (the caller commits): runs whose journey
    lists it in ``end_on`` end; runs waiting for a step whose journey lists it in ``advance_on``
    take that step now. Each move is in the run's transition log."""
    _check_signal(recipient, event)
    queries = queries_for(mapped_schema(session.connection()))
    with sync_writer(session) as writer:
        rows = writer.execute(queries.journey_signal, {"recipient": recipient, "event": event})
    result, jobs = _result(rows)
    if jobs:
        pgqueue.insert_all(session, jobs, schema=queue_schema)
    return result


async def asignal(
    session: AsyncSession, recipient: str, event: str, *, queue_schema: str = "public"
) -> SignalResult:
    """The async twin of :func:`signal`."""
    _check_signal(recipient, event)
    connection = await session.connection()
    assert connection.sync_connection is not None
    queries = queries_for(mapped_schema(connection.sync_connection))
    async with async_writer(session) as writer:
        rows = await writer.execute(queries.journey_signal, {"recipient": recipient, "event": event})
    result, jobs = _result(rows)
    if jobs:
        await pgqueue.ainsert_all(session, jobs, schema=queue_schema)
    return result
