"""The dispatch worker's database side: two statements per batch, and what to do when one fails.

:func:`claim` runs ``queries/dispatch_claim.sql`` for a batch of delivery ids: it loads what each
adapter needs and marks the ready deliveries ``dispatched`` (or suppresses a read fallback), in one
statement and one commit. :func:`record` runs ``queries/dispatch_record.sql``: every attempt of the
batch, each delivery's new status and, on the final attempt, its exhaustion, again in one statement.

A batch's failure must stay the failure of the delivery that caused it. When the record statement
fails on a value (a provider answer PostgreSQL refuses, say), the batch is split in halves until
the good deliveries have landed; a delivery that still can't be written is written once more with a
minimal attempt (same outcome, no provider response, no message id), so a sent delivery is not left
``dispatched`` without an attempt. Conflicts with a concurrent writer (a stale attempt count, a
deadlock) re-run the statement. A lost connection is the caller's to handle: it fails the batch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg
from psycopg import errors as pg_errors

from ..adapters.base import DeliveryContext
from ..errors import DeliveryNotFound, InvalidTransition
from ..states import TERMINAL_STATES, TRANSITIONS
from ..store import Queries

__all__ = ["Claim", "RecordItem", "Recorded", "claim", "record"]

_log = logging.getLogger("chimeway.dispatch")

#: How often a record statement is re-run after losing to a concurrent writer of the same delivery.
_CONFLICT_RETRIES: Final = 5
_CONFLICTS = (pg_errors.UniqueViolation, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_ENDING = ("permanent", "bounced")
# statuses a delivery may be sent from
_OPEN = ("pending", "failed")


@dataclass(frozen=True, slots=True)
class Claim:
    """What the claim statement decided for one delivery.

    ``kind`` is ``ready`` (send it: ``context`` is set), ``ended`` (ended, deferred with no release
    time, or taken by a concurrent run: nothing to do), ``suppressed`` (by the perform checkpoint
    now, ``reason`` says why), ``deferred`` (in quiet hours: ``wait`` seconds until it may go),
    ``missing`` (no such delivery) or ``undecodable`` (dispatched, but its notification's content
    can't be read: ``context`` carries empty metadata, and the attempt is recorded as a permanent
    failure).
    """

    kind: str
    channel: str = ""
    context: DeliveryContext | None = None
    reason: str | None = None
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordItem:
    """One attempt to record: the classified adapter result and whether it was the final attempt."""

    delivery_id: uuid.UUID
    outcome: str
    error_class: str | None
    response: Mapping[str, Any]
    message_id: str | None
    adapter: str
    final: bool

    def encoded(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.delivery_id,  # orjson writes a UUID itself, in C
                "outcome": self.outcome,
                "error_class": self.error_class,
                "response": self.response,
                "message_id": self.message_id,
                "adapter": self.adapter,
                "final": self.final,
            }
        )

    def minimal(self) -> RecordItem:
        """The same attempt with nothing the provider said: always writable."""
        return RecordItem(
            self.delivery_id, self.outcome, self.error_class, {}, None, self.adapter, self.final
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """The attempt as written and the delivery as it left it."""

    status: str
    suppression_reason: str | None
    attempt_id: uuid.UUID
    attempt_number: int
    #: the attempt written was the minimal one (the full one could not be)
    minimal: bool = False


# -- claim -----------------------------------------------------------------------------------------


async def claim(
    conn: psycopg.AsyncConnection[Any], queries: Queries, ids: Sequence[str]
) -> dict[uuid.UUID, Claim]:
    """Run the claim statement for ``ids`` (UUIDs as text); a :class:`Claim` for each found."""
    cursor = await conn.execute(queries.dispatch_claim, {"ids": _array(ids)})
    claims, lost = interpret(await cursor.fetchall())
    if lost:
        # As the one-at-a-time path does after losing a compare-and-set: look again, and send only
        # if the winner left it dispatched.
        settle_lost(claims, lost, await _statuses(conn, queries, [str(key) for key in lost]))
    return claims


def interpret(
    rows: Sequence[tuple[Any, ...]],
) -> tuple[dict[uuid.UUID, Claim], dict[uuid.UUID, tuple[Any, ...]]]:
    """The claim statement's rows as claims, and the rows a concurrent transaction changed between
    the statement's read and its write (for :func:`settle_lost`, after a second look)."""
    claims: dict[uuid.UUID, Claim] = {}
    lost: dict[uuid.UUID, tuple[Any, ...]] = {}
    for row in rows:
        key = row[0]
        status, moved, orchestration, read, channel = row[1], row[2], row[3], row[4], row[6]
        reason, moved_orchestration, wait = row[11], row[12], row[13]
        if moved == "dispatched":
            claims[key] = _ready(row)
        elif moved == "suppressed":
            claims[key] = Claim("suppressed", channel, reason=reason)
        elif moved is not None and moved_orchestration == "deferred":
            claims[key] = Claim("deferred", channel, wait=float(wait or 0.0))
        elif orchestration == "deferred" and status in _OPEN and wait is not None:
            if wait > 0:  # its time has not come: wait again
                claims[key] = Claim("deferred", channel, wait=float(wait))
            else:  # due, and released by a concurrent claim meanwhile
                lost[key] = row
        elif status in TERMINAL_STATES or orchestration != "ready":
            claims[key] = Claim("ended", channel)
        elif status == "dispatched" and not read:
            claims[key] = _ready(row)  # sent before by a run that died: send again, no write
        else:
            lost[key] = row  # a concurrent transaction changed it between our read and our write
    return claims, lost


def settle_lost(
    claims: dict[uuid.UUID, Claim], lost: Mapping[uuid.UUID, tuple[Any, ...]], statuses: Mapping[str, str]
) -> None:
    """Claims for the rows :func:`interpret` lost, given their statuses now."""
    for key, row in lost.items():
        status = statuses.get(str(key))
        if status is None:
            continue
        claims[key] = _ready(row) if status == "dispatched" and not row[4] else Claim("ended", row[6])


def _ready(row: tuple[Any, ...]) -> Claim:
    (delivery_id, _s, _m, _o, _r, notification_id, channel, recipient, content, key, attempts) = row[:11]
    try:
        metadata = orjson.loads(content)
        kind = "ready" if isinstance(metadata, dict) else "undecodable"
    except Exception:  # written by another client, nested deeper than a decoder follows
        metadata, kind = {}, "undecodable"
    render_key, render_version, render_data = row[14:17] if len(row) > 16 else (None, None, None)
    if render_key is not None:
        try:
            data = orjson.loads(render_data)
        except Exception:
            data = None
        if not isinstance(data, dict):
            render_data, kind = {}, "undecodable"
        else:
            render_data = data
    context = DeliveryContext(
        delivery_id=delivery_id,
        notification_id=notification_id,
        channel=channel,
        attempt_number=int(attempts) + 1,
        notification_key=key,
        recipient_identity=recipient,
        metadata=metadata if kind == "ready" else {},
        render_key=render_key,
        render_version=render_version,
        render_data=render_data if render_key is not None and kind == "ready" else {},
    )
    return Claim(kind, channel, context)


async def _statuses(
    conn: psycopg.AsyncConnection[Any], queries: Queries, ids: Sequence[str]
) -> dict[str, str]:
    cursor = await conn.execute(queries.dispatch_statuses, {"ids": _array(ids)})
    return {str(row[0]): str(row[1]) for row in await cursor.fetchall()}


def _array(ids: Sequence[str]) -> str:
    # A text literal cast to uuid[] by the statement: cheaper to build than psycopg's list dumping.
    return "{" + ",".join(ids) + "}"


# -- record ----------------------------------------------------------------------------------------


async def record(
    conn: psycopg.AsyncConnection[Any], queries: Queries, items: Sequence[RecordItem]
) -> dict[uuid.UUID, Recorded | BaseException]:
    """Record every item; per delivery, what was written or why nothing could be.

    A delivery the statement left alone (pending, ended another way, or deleted meanwhile) maps
    to the error the one-at-a-time path raises: :class:`~chimeway.errors.InvalidTransition`, or
    :class:`~chimeway.errors.DeliveryNotFound` for a deleted one. Raises only when the connection
    itself fails.
    """
    results: dict[uuid.UUID, Recorded | BaseException] = {}
    encoded: list[tuple[RecordItem, bytes]] = []
    for item in items:
        try:
            encoded.append((item, item.encoded()))
        except Exception:  # a value orjson refuses (a lone surrogate, say): only the minimal form goes
            minimal = item.minimal()
            encoded.append((minimal, minimal.encoded()))
    await _record_split(conn, queries, encoded, results)
    skipped = [item for item in items if item.delivery_id not in results]
    if skipped:
        now = await _statuses(conn, queries, [str(item.delivery_id) for item in skipped])
        for item in skipped:
            status = now.get(str(item.delivery_id))
            results[item.delivery_id] = (
                _refused(status, item) if status is not None else DeliveryNotFound(item.delivery_id)
            )
    return results


async def _record_split(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    encoded: Sequence[tuple[RecordItem, bytes]],
    results: dict[uuid.UUID, Recorded | BaseException],
) -> None:
    try:
        rows = await _run_record(conn, queries, [payload for _, payload in encoded])
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise  # the connection, not the data: the caller fails the batch
    except psycopg.Error as exc:
        if len(encoded) > 1:
            middle = len(encoded) // 2
            await _record_split(conn, queries, encoded[:middle], results)
            await _record_split(conn, queries, encoded[middle:], results)
            return
        (item, _payload) = encoded[0]
        if item.response or item.message_id is not None:
            _log.warning(
                "chimeway dispatch: the attempt of delivery %s could not be recorded (%s); "
                "recording it without the provider's response",
                item.delivery_id,
                type(exc).__name__,
            )
            minimal = item.minimal()
            await _record_split(conn, queries, [(minimal, minimal.encoded())], results)
            if isinstance(results.get(item.delivery_id), Recorded):
                recorded = results[item.delivery_id]
                assert isinstance(recorded, Recorded)
                results[item.delivery_id] = Recorded(
                    recorded.status,
                    recorded.suppression_reason,
                    recorded.attempt_id,
                    recorded.attempt_number,
                    minimal=True,
                )
            return
        results[item.delivery_id] = exc
        return
    for delivery_id, status, reason, attempt_id, number in rows:
        results[delivery_id] = Recorded(status, reason, attempt_id, int(number))


async def _run_record(
    conn: psycopg.AsyncConnection[Any], queries: Queries, payloads: Sequence[bytes]
) -> list[tuple[Any, ...]]:
    document = (b"[" + b",".join(payloads) + b"]").decode()
    for attempt in range(_CONFLICT_RETRIES + 1):
        try:
            cursor = await conn.execute(queries.dispatch_record, {"items": document})
            return await cursor.fetchall()
        except _CONFLICTS:
            if attempt == _CONFLICT_RETRIES:
                raise
    raise AssertionError("unreachable")


def _refused(status: str, item: RecordItem) -> InvalidTransition:
    """The error the one-at-a-time path raises for an attempt the delivery's status refuses."""
    if item.error_class in _ENDING:
        return InvalidTransition(
            status,
            "cancelled",
            hint="an attempt can only end a delivery that is dispatched (or failed by a concurrent attempt)",
        )
    target = "succeeded" if item.outcome == "succeeded" else "failed"
    return InvalidTransition(status, target, TRANSITIONS.get(status, ()))
