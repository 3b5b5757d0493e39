"""Recording what a worker returned: the value as JSON, within a size cap, or a marker saying why not.

A worker's return value (anything but ``None`` and the outcome types such as :class:`Snooze`) is
recorded in ``jobs.result`` by the ack that completes the job, in the same statement. The value is
encoded here, once, by orjson; the ack carries the encoded text as a fragment, so nothing is
encoded twice. A value that can't be stored must never cost the job its completion: a value over
the cap, or one orjson can't encode, is replaced by a *marker* (a JSON object with the key
``"pgqueue_result"``) and a warning is logged. :func:`pgqueue.wait` raises
:class:`~pgqueue.errors.ResultNotStoredError` when it reads a marker.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from .errors import ConfigError

__all__ = ["DEFAULT_RESULT_MAX_BYTES", "MARKER_KEY", "encode_result", "marker_reason", "validate_max_bytes"]

_log = logging.getLogger("pgqueue.results")

#: the default cap on one encoded result: results live in the jobs table, read by every fetch's heap
DEFAULT_RESULT_MAX_BYTES = 65536
#: the key of the object that replaces a result that could not be stored
MARKER_KEY = "pgqueue_result"
_MAX_ALLOWED = 64 * 1024 * 1024


def validate_max_bytes(value: int) -> int:
    """``result_max_bytes`` checked: an integer of bytes, 64 .. 64 MiB."""
    if isinstance(value, bool) or not isinstance(value, int) or not 64 <= value <= _MAX_ALLOWED:
        raise ConfigError(f"result_max_bytes must be an integer {64}..{_MAX_ALLOWED}, got {value!r}")
    return value


def _marker(reason: str, detail: dict[str, Any]) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps({MARKER_KEY: reason, **detail}))


def encode_result(value: Any, job_id: int, worker: str, max_bytes: int) -> orjson.Fragment:
    """``value`` as JSON ready to ride in an ack, or a marker when it can't be stored (logged)."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        message = f"{type(value).__name__} is not JSON-serialisable ({exc})"
        _log.warning(
            "pgqueue: job %d (%s) completed, but its result was not recorded: %s", job_id, worker, message
        )
        return _marker("not_json", {"error": message[:500]})
    if len(text) > max_bytes:
        _log.warning(
            "pgqueue: job %d (%s) completed, but its result of %d bytes is over result_max_bytes "
            "(%d) and was not recorded",
            job_id,
            worker,
            len(text),
            max_bytes,
        )
        return _marker("too_large", {"bytes": len(text), "max_bytes": max_bytes})
    if b"\\u0000" in text:
        # jsonb refuses the NUL character; refusing it here keeps the ack's batch whole.
        _log.warning("pgqueue: job %d (%s) completed, but its result holds a NUL character", job_id, worker)
        return _marker("not_json", {"error": "a string in the result holds a NUL character (\\u0000)"})
    return orjson.Fragment(text)


def marker_reason(value: Any) -> str | None:
    """The reason a stored result is a marker (``"too_large"``, ``"not_json"``), or None."""
    if isinstance(value, dict) and len(value) <= 3 and isinstance(value.get(MARKER_KEY), str):
        return str(value[MARKER_KEY])
    return None
