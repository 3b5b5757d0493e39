"""What a workflow step reads, and the signals it may wait for.

* :func:`signal` / :func:`asignal` send a named signal with a JSON payload, in the caller's
  transaction (it takes effect at commit). The same is callable from SQL as
  ``SELECT pgqueue_signal('name', '{"any": "json"}'::jsonb)`` in the queue's schema, from a
  trigger or another application. A signal is kept: a step that starts waiting for it later is
  released at once. Sending a name again replaces its payload.
* :func:`received_signal` is what a step waiting for a signal got: its name, payload and time, or
  None when the wait timed out (the step runs anyway at its deadline and decides what that means).
* :func:`dependencies` / :func:`adependencies` read a step's dependencies: id, step name, final
  state and recorded result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import PgQueueError
from .job import Job
from .store import queries_for
from .targets import async_writer, sync_writer

__all__ = [
    "Dependency",
    "ReceivedSignal",
    "SignalError",
    "adependencies",
    "asignal",
    "dependencies",
    "received_signal",
    "signal",
]

_MAX_NAME = 255


class SignalError(PgQueueError, ValueError):
    """A signal that can't be sent as given (its name or payload); nothing was written."""


@dataclass(frozen=True, slots=True)
class ReceivedSignal:
    """The signal a waiting step received."""

    name: str
    payload: Any
    sent_at: str


@dataclass(frozen=True, slots=True)
class Dependency:
    """One job a step depended on, as it is now."""

    id: int
    #: its workflow step name, or None for a job outside any workflow
    step: str | None
    state: str
    #: the JSON value its worker returned (``jobs.result``), None when there is none
    result: Any


def _params(name: str, payload: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME:
        raise SignalError(f"signal name must be a string of 1 to 255 characters, got {name!r}")
    try:
        encoded = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SignalError(f"signal {name!r}: payload must be JSON-serialisable ({exc})") from None
    return {"name": name, "payload": encoded}


def signal(target: Any, name: str, payload: Any = None, *, schema: str = "public") -> int:
    """Send signal ``name`` with ``payload`` in the transaction of ``target``; returns how many
    waiting jobs it released (they become visible to the queue when the transaction commits)."""
    params = _params(name, payload)
    with sync_writer(target) as writer:
        rows = writer.execute(queries_for(schema).workflow_signal, params)
    return int(rows[0][0])


async def asignal(target: Any, name: str, payload: Any = None, *, schema: str = "public") -> int:
    """The async twin of :func:`signal`."""
    params = _params(name, payload)
    async with async_writer(target) as writer:
        rows = await writer.execute(queries_for(schema).workflow_signal, params)
    return int(rows[0][0])


def received_signal(job: Job) -> ReceivedSignal | None:
    """The signal ``job`` waited for and got, or None (it timed out, or the job waited for none)."""
    meta = job.meta if isinstance(job.meta, dict) else {}
    found = meta.get("signal")
    if not isinstance(found, dict) or not isinstance(found.get("name"), str):
        return None
    sent_at = found.get("sent_at")
    return ReceivedSignal(found["name"], found.get("payload"), str(sent_at) if sent_at is not None else "")


def _dependency(row: Any) -> Dependency:
    return Dependency(int(row[0]), row[1], str(row[2]), json.loads(row[3]) if row[3] is not None else None)


def _job_id(job: Job | int) -> int:
    job_id = job if isinstance(job, int) else getattr(job, "id", None)
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise TypeError(f"dependencies takes a Job or a job id, got {job!r}")
    return job_id


def dependencies(target: Any, job: Job | int, *, schema: str = "public") -> list[Dependency]:
    """The jobs ``job`` depends on, oldest first, with their states and results."""
    params = {"id": _job_id(job)}
    with sync_writer(target) as writer:
        rows = writer.execute(queries_for(schema).workflow_dependencies, params)
    return [_dependency(row) for row in rows]


async def adependencies(target: Any, job: Job | int, *, schema: str = "public") -> list[Dependency]:
    """The async twin of :func:`dependencies`."""
    params = {"id": _job_id(job)}
    async with async_writer(target) as writer:
        rows = await writer.execute(queries_for(schema).workflow_dependencies, params)
    return [_dependency(row) for row in rows]
