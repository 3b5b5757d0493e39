"""Validation and normalisation of job options: every bad value is an error that names it.

Shared by ``Worker`` class options (checked when the class is defined) and ``Worker.new``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .errors import ConfigError
from .job import JobState, UniqueSpec

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_SECONDS",
    "REPLACEABLE_FIELDS",
    "SCHEDULED_AT_RANGE",
    "UNIQUE_GROUPS",
    "compile_replace",
    "compile_unique",
    "encode_json_object",
    "merge_unique",
    "normalize_tags",
    "positive_seconds",
    "seconds",
    "unique_key",
    "validate_max_attempts",
    "validate_priority",
    "validate_queue",
    "validate_schedule_in",
    "validate_scheduled_at",
]

_MAX_INT4 = 2**31 - 1
#: The longest duration any option or delay may take: about 317 years. ``now() + MAX_SECONDS`` is
#: far inside PostgreSQL's timestamp range, and a float this size still has sub-millisecond precision.
MAX_SECONDS = 1e10
#: The instants ``scheduled_at`` may take: every session time zone can represent them (PostgreSQL
#: shows a timestamptz in the session's zone, and Python's datetime stops at years 1 and 9999, so a
#: time near either end fails to decode in a zone on the wrong side of UTC).
SCHEDULED_AT_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))
#: How deeply args and meta may nest: the most the runtime's JSON decoder (orjson) reads back.
MAX_JSON_DEPTH = 1024

UNIQUE_FIELDS = frozenset({"args", "meta", "queue", "worker"})
UNIQUE_OPTIONS = frozenset({"fields", "keys", "period", "states", "timestamp"})
_INCOMPLETE = (JobState.AVAILABLE, JobState.SCHEDULED, JobState.EXECUTING, JobState.RETRYABLE)
UNIQUE_GROUPS: dict[str, tuple[JobState, ...]] = {
    "all": tuple(JobState),
    "incomplete": _INCOMPLETE,
    "successful": (*_INCOMPLETE, JobState.COMPLETED),
}
UNIQUE_DEFAULTS: dict[str, Any] = {
    "fields": ("args", "queue", "worker"),
    "keys": (),
    "period": 60,
    "states": "successful",
    "timestamp": "inserted_at",
}
REPLACEABLE_FIELDS = frozenset(
    {"args", "max_attempts", "meta", "priority", "queue", "scheduled_at", "tags", "worker"}
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_queue(queue: object) -> str:
    if not isinstance(queue, str) or not queue.strip() or len(queue) > 128 or "\x00" in queue:
        raise ConfigError(f"queue must be a non-blank string of at most 128 characters, got {queue!r}")
    return queue


def validate_priority(priority: object) -> int:
    if not _is_int(priority) or not 0 <= priority <= 9:  # type: ignore[operator]
        raise ConfigError(f"priority must be an integer 0..9, got {priority!r}")
    return priority  # type: ignore[return-value]


def validate_max_attempts(max_attempts: object) -> int:
    if not _is_int(max_attempts) or not 1 <= max_attempts <= _MAX_INT4:  # type: ignore[operator]
        raise ConfigError(f"max_attempts must be an integer 1..{_MAX_INT4}, got {max_attempts!r}")
    return max_attempts  # type: ignore[return-value]


def seconds(value: object, name: str, *, allow_negative: bool = False) -> float:
    """A duration in seconds from a number or a ``timedelta``; anything else names ``name``."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    if not math.isfinite(result) or abs(result) > MAX_SECONDS:
        raise ConfigError(f"{name} must be a finite number of seconds up to {MAX_SECONDS:g}, got {value!r}")
    if result < 0 and not allow_negative:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return result


def positive_seconds(value: object, name: str) -> float:
    """A duration that must be more than zero (an interval, a timeout): see :func:`seconds`."""
    result = seconds(value, name)
    if result <= 0:
        raise ConfigError(f"{name} must be more than 0 seconds, got {value!r}")
    return result


def validate_schedule_in(value: object) -> float:
    return seconds(value, "schedule_in", allow_negative=True)


def validate_scheduled_at(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"scheduled_at must be a timezone-aware datetime, got {value!r}")
    earliest, latest = SCHEDULED_AT_RANGE
    try:
        inside = earliest <= value <= latest
    except OverflowError:  # the offset pushes it past year 1 or 9999 in UTC
        inside = False
    if not inside:
        raise ConfigError(
            f"scheduled_at must be between {earliest:%Y-%m-%d} and {latest:%Y-%m-%d} UTC "
            f"(times every session time zone can show), got {value!r}"
        )
    return value


def normalize_tags(tags: object) -> tuple[str, ...]:
    """Trim, lower-case and de-duplicate tags, keeping their order; ``None`` entries are dropped."""
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise ConfigError(f"tags must be a list of strings, got {tags!r}")
    seen: dict[str, None] = {}
    for tag in tags:
        if tag is None:
            continue
        if not isinstance(tag, str | int) or isinstance(tag, bool):
            raise ConfigError(f"tags must be strings, got {tag!r}")
        text = str(tag).strip().lower()
        if "\x00" in text:
            raise ConfigError(f"tags must not contain NUL characters, got {tag!r}")
        if text:
            seen.setdefault(text, None)
    return tuple(seen)


def encode_json_object(value: object, name: str) -> str:
    """Encode ``value`` as a JSON object that PostgreSQL's jsonb stores and gives back unchanged.

    Raises ``TypeError`` naming ``name`` when it would not round-trip: not a dict, non-string
    keys, tuples, sets, NaN or infinities, NUL characters, unpaired surrogates, or nesting deeper
    than :data:`MAX_JSON_DEPTH` (never ``RecursionError``).
    """
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict (a JSON object), got {type(value).__name__}")
    # The fast path: orjson encodes in C and refuses non-string keys, sets and bad UTF-8 itself;
    # decoding it again and comparing catches what it would silently change (NaN becomes null,
    # tuples become lists, datetimes become strings).
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _encode_json_object_slowly(value, name)  # e.g. integers beyond 64 bits
    if orjson.loads(text) != value:
        raise TypeError(f"{name} must round-trip through JSON unchanged (use str keys, lists not tuples)")
    # Bulk inserts call this once per job, so the regexes run only when a cheap substring test on
    # the str says they could match (a substring test on str is ~10x cheaper than on bytes or a
    # regex search); almost no document contains an escaped NUL or an exponent.
    if "\\u0000" in text and _NUL.search(text):
        raise TypeError(f"{name} must not contain NUL characters (jsonb can't store them)")
    if "e+" in text and _EXPONENT.search(text):
        _refuse_inexact_floats(value, name)
    return text


_EXPONENT = re.compile(r"[0-9]e\+")
# An escaped NUL (\u0000), not preceded by an escaped backslash (a literal "\\u0000" is fine).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _encode_json_object_slowly(value: dict[Any, Any], name: str) -> str:
    # orjson refused it: integers beyond 64 bits, or nesting past its 254 levels. Every check here
    # recurses, so a document nested past Python's recursion limit must fail as a TypeError too.
    depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise TypeError(
            f"{name} nests more than {MAX_JSON_DEPTH} levels deep, the most the runtime can decode"
        )
    try:
        return _encode_checked(value, name)
    except RecursionError:
        raise TypeError(
            f"{name} nests {depth} levels deep, more than Python's recursion limit lets it encode"
        ) from None


def _depth(value: object) -> int:
    """How many arrays and objects deep ``value`` nests, counted without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest  # enough to refuse it; no need to walk the rest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _encode_checked(value: dict[Any, Any], name: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must contain only JSON values: {exc}") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError(f"{name} must not contain unpaired surrogate characters") from None
    if _NUL.search(text):
        raise TypeError(f"{name} must not contain NUL characters (jsonb can't store them)")
    if json.loads(text) != value:
        raise TypeError(f"{name} must round-trip through JSON unchanged (use str keys, lists not tuples)")
    if "e+" in text:
        _refuse_inexact_floats(value, name)
    return text


def _refuse_inexact_floats(value: object, name: str) -> None:
    # jsonb keeps numbers as exact decimals and prints large ones without an exponent, so a float
    # such as 1.945024906436851e+16 comes back as the integer 19450249064368510, which is not the
    # float that was stored. Floats that large are only ever integral: ask for an int instead.
    if isinstance(value, float):
        if abs(value) >= 1e16:
            raise TypeError(
                f"{name}: the float {value!r} can't round-trip through jsonb exactly; pass an int"
            )
    elif isinstance(value, dict):
        for item in value.values():
            _refuse_inexact_floats(item, name)
    elif isinstance(value, list):
        for item in value:
            _refuse_inexact_floats(item, name)


def _unique_states(value: object) -> tuple[JobState, ...]:
    if isinstance(value, str):
        if value not in UNIQUE_GROUPS:
            raise ConfigError(
                f"unique states must be one of {sorted(UNIQUE_GROUPS)} or a list of states, got {value!r}"
            )
        return UNIQUE_GROUPS[value]
    if not isinstance(value, Iterable):
        raise ConfigError(f"unique states must be a group name or a list of states, got {value!r}")
    states: list[JobState] = []
    for state in value:
        try:
            states.append(JobState(state))
        except ValueError:
            raise ConfigError(f"unique states: unknown state {state!r}") from None
    missing = [state.value for state in _INCOMPLETE if state not in states]
    if missing:
        # The unique index only constrains rows in their unique states. A job must be covered
        # from insertion until it finishes, or a twin could slip in while it is uncovered and
        # the index would then refuse to let it back in.
        raise ConfigError(
            "unique states must include available, scheduled, executing and retryable "
            f"(a job stays unique from insert until it finishes); missing {missing}"
        )
    return tuple(dict.fromkeys(states))


def compile_unique(value: object) -> UniqueSpec | None:
    """Turn a ``unique`` option (``True``, ``False``/``None`` or a dict) into a :class:`UniqueSpec`."""
    if value is None or value is False:
        return None
    if isinstance(value, UniqueSpec):
        return value
    if value is True:
        options: dict[str, Any] = {**UNIQUE_DEFAULTS, "period": None}
    elif isinstance(value, Mapping):
        if not value:
            raise ConfigError("unique must be True, False or a non-empty dict of options, got {}")
        unknown = set(value) - UNIQUE_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown unique option {sorted(unknown)[0]!r}; valid: {sorted(UNIQUE_OPTIONS)}"
            )
        options = {**UNIQUE_DEFAULTS, **value}
    else:
        raise ConfigError(f"unique must be True, False or a dict of options, got {value!r}")

    fields = options["fields"]
    if isinstance(fields, str) or not isinstance(fields, Iterable) or not list(fields):
        raise ConfigError(
            f"unique fields must be a non-empty list from {sorted(UNIQUE_FIELDS)}, got {fields!r}"
        )
    fields = tuple(dict.fromkeys(fields))
    bad = [f for f in fields if f not in UNIQUE_FIELDS]
    if bad:
        raise ConfigError(f"unknown unique field {bad[0]!r}; valid: {sorted(UNIQUE_FIELDS)}")

    keys = options["keys"]
    if isinstance(keys, str) or not isinstance(keys, Iterable) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"unique keys must be a list of strings, got {keys!r}")
    keys = tuple(keys)
    if keys and not {"args", "meta"} & set(fields):
        raise ConfigError("unique keys only apply when fields include 'args' or 'meta'")

    period_value = options["period"]
    if period_value is None or period_value == "infinity":
        period: float | None = None
    else:
        period = seconds(period_value, "unique period")
        if period <= 0:
            raise ConfigError(f"unique period must be positive (or None for forever), got {period_value!r}")

    timestamp = options["timestamp"]
    if timestamp not in ("inserted_at", "scheduled_at"):
        raise ConfigError(f"unique timestamp must be 'inserted_at' or 'scheduled_at', got {timestamp!r}")
    return UniqueSpec(fields, keys, period, _unique_states(options["states"]), timestamp)


def merge_unique(base: object, override: object) -> object:
    """Combine a worker's ``unique`` option with one given to ``new()``: dicts merge, else override."""
    if isinstance(override, Mapping) and base is not None and base is not False:
        if isinstance(base, UniqueSpec):
            base = {
                "fields": base.fields,
                "keys": base.keys,
                "period": base.period,
                "states": base.states,
                "timestamp": base.timestamp,
            }
        elif base is True:
            base = {**UNIQUE_DEFAULTS, "period": None}
        if isinstance(base, Mapping):
            return {**base, **override}
    return override


def compile_replace(value: object) -> dict[str, tuple[str, ...]]:
    """``replace``: a list of fields (for every state) or a dict of state → fields."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, str):
        fields = tuple(value)
        pairs = [(state.value, fields) for state in JobState]
    else:
        raise ConfigError(f"replace must be a list of fields or a dict of state to fields, got {value!r}")
    result: dict[str, tuple[str, ...]] = {}
    for state, fields in pairs:
        try:
            state_name = JobState(state).value
        except ValueError:
            raise ConfigError(f"replace: unknown state {state!r}") from None
        if isinstance(fields, str) or not isinstance(fields, Iterable):
            raise ConfigError(f"replace fields for {state_name} must be a list, got {fields!r}")
        fields = tuple(fields)
        bad = [f for f in fields if f not in REPLACEABLE_FIELDS]
        if bad:
            raise ConfigError(
                f"replace: field {bad[0]!r} can't be replaced; valid: {sorted(REPLACEABLE_FIELDS)}"
            )
        result[state_name] = fields
    return result


def _subset(mapping: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: mapping[k] for k in keys if k in mapping} if keys else mapping


def unique_key(
    spec: UniqueSpec, *, worker: str, queue: str, args: dict[str, Any], meta: dict[str, Any]
) -> bytes:
    """The 16-byte digest that the unique index compares: the unique fields, canonically encoded."""
    parts: dict[str, Any] = {}
    for name in spec.fields:
        if name == "worker":
            parts["worker"] = worker
        elif name == "queue":
            parts["queue"] = queue
        elif name == "args":
            parts["args"] = _subset(args, spec.keys)
        elif name == "meta":
            parts["meta"] = _subset(meta, spec.keys)
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()
