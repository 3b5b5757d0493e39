"""The worker process of a node's process pool (see :mod:`pgqueue.processes`): performs sync jobs.

Started by the pool as ``python -m pgqueue.process_child``. It speaks newline-delimited JSON on
its own copies of stdin and stdout; the descriptors 0 and 1 are pointed at /dev/null and stderr
first, so a ``print`` in a worker can never corrupt the conversation.

1. The pool sends ``{"path": [...], "modules": [...]}``: the node's ``sys.path`` and the worker
   modules it was configured with. Those are the only modules this process imports by name
   (:func:`pgqueue.worker.load_worker_modules`); a job row names a worker, which is looked up in
   the registry those imports filled, never imported.
2. The process answers ``{"ready": pid}``, or ``{"error": "..."}`` and exits.
3. Then, one job at a time: a line holding the job's fields in :class:`~pgqueue.job.Job` order,
   answered by one line saying how ``perform`` ended (:func:`perform_encoded`).

Timeouts and cancels are the pool's business: it kills this process. The process ends on its own
when its stdin closes (the pool stopping) or when its parent is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from datetime import datetime
from typing import Any, BinaryIO

import orjson

from .errors import ConfigError
from .job import Job
from .lifecycle import describe_error
from .poison import storable_text
from .worker import Cancel, Discard, Error, JobOutcome, Snooze, WorkerRegistry, load_worker_modules, registry

__all__ = ["decode_job", "encode_job", "main", "perform_encoded"]

#: Job fields that are timestamps: sent as ISO 8601 text, parsed back on this side.
_TIMESTAMPS = tuple(
    Job._fields.index(name)
    for name in (
        "inserted_at",
        "scheduled_at",
        "attempted_at",
        "completed_at",
        "cancelled_at",
        "discarded_at",
    )
)
_OUTCOMES: dict[type[JobOutcome], str] = {
    Snooze: "snooze",
    Cancel: "cancel",
    Discard: "discard",
    Error: "error",
}
#: how often a process checks that the node that started it is still there
_PARENT_CHECK_INTERVAL = 0.25


def encode_job(job: Job) -> bytes:
    """One job as the line the pool sends (without its newline). Raises TypeError when the job's
    args or meta can't be written as JSON."""
    return orjson.dumps(job[: len(Job._fields) - 1])


def decode_job(line: bytes) -> Job:
    fields = orjson.loads(line)
    for index in _TIMESTAMPS:
        if fields[index] is not None:
            fields[index] = datetime.fromisoformat(fields[index])
    return Job(*fields)


def _jsonable(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=repr)
    except Exception:  # nested too deep, an integer past 64 bits, a repr that raises, ...
        return orjson.dumps(storable_text(f"<result not JSON-compatible: {type(value).__name__}>"))


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
        trace = "".join(traceback.format_exception(exc))
    except Exception:
        message, trace = "", f"(the {name} could not be turned into text)"
    summary = f"{name}: {message}" if message else name
    return storable_text(f"{summary}\n\n{trace}")


def perform_encoded(line: bytes, workers: WorkerRegistry = registry) -> bytes:
    """Run the job ``line`` describes and say how it ended, as one JSON object:

    ``{"ok": result}`` (the returned value, made JSON-compatible), ``{"outcome": "snooze" |
    "cancel" | "discard" | "error", "reason": ...}`` for a returned or raised outcome, or
    ``{"exception": text}`` for anything else raised (the text names the type and holds the
    traceback)."""
    try:
        job = decode_job(line)
    except Exception as exc:
        return b'{"exception":' + orjson.dumps(f"the job could not be decoded: {describe_error(exc)}") + b"}"
    worker_cls = workers.get(job.worker)
    if worker_cls is None:
        # The node checks this before handing a job over; a row must never reach an import.
        return b'{"exception":' + orjson.dumps(f"unknown worker: {job.worker}") + b"}"
    try:
        result = worker_cls().perform(job)
    except JobOutcome as outcome:
        result = outcome
    except Exception as exc:
        return b'{"exception":' + orjson.dumps(_describe(exc)) + b"}"
    if result is None:
        return b'{"ok":null}'
    if isinstance(result, JobOutcome):
        kind = _OUTCOMES.get(type(result)) or next(
            (name for cls, name in _OUTCOMES.items() if isinstance(result, cls)), "error"
        )
        reason = result.seconds if isinstance(result, Snooze) else result.reason
        return b'{"outcome":"' + kind.encode() + b'","reason":' + _jsonable(reason) + b"}"
    if isinstance(result, BaseException):
        return b'{"exception":' + orjson.dumps(_describe(result)) + b"}"
    return b'{"ok":' + _jsonable(result) + b"}"


def _watch_parent(parent: int) -> None:
    # A node killed outright can't stop its processes: each one notices it was orphaned and ends,
    # even in the middle of a job (the job's row is rescued by the lifeline).
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_INTERVAL)
    os._exit(70)


def _channels() -> tuple[BinaryIO, BinaryIO]:
    incoming = os.fdopen(os.dup(0), "rb")
    outgoing = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return incoming, outgoing


def main() -> int:
    # Ctrl-C reaches the whole process group; the node decides when its jobs stop, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    incoming, outgoing = _channels()
    hello = orjson.loads(incoming.readline() or b"{}")
    sys.path[:] = [entry for entry in hello.get("path", []) if isinstance(entry, str)]
    try:
        load_worker_modules(hello.get("modules", []))
    except ConfigError as exc:
        outgoing.write(orjson.dumps({"error": str(exc)}) + b"\n")
        outgoing.flush()
        return 1
    threading.Thread(target=_watch_parent, args=(parent,), name="pgqueue-parent-watch", daemon=True).start()
    outgoing.write(orjson.dumps({"ready": os.getpid()}) + b"\n")
    outgoing.flush()
    for line in incoming:
        outgoing.write(perform_encoded(line) + b"\n")
        outgoing.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
