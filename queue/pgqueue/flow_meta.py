"""What a job carries for flow control: its partition key and its weight, both kept in ``meta``.

``meta.partition_key`` (a string) puts a job in a partition of a queue whose limits are
partitioned; it is derived when the job is built from its worker's ``partition_by``:

- ``"worker"``: the worker's name;
- ``"args.KEY"`` / ``"meta.KEY"``: that key of the job's args / meta.

The key is the JSON array of those values in order (``["acme"]``, ``["Sync", 7]``). A missing
args or meta key counts as ``null``, so every job lacking it shares one documented default
partition (``[null]``). Keys longer than :data:`MAX_KEY_CHARS` are replaced by a digest, so no
argument can make a key too large to index.

``meta.weight`` (an integer 1..:data:`MAX_WEIGHT`) is how many units the job counts for against a
rate limit; 1 when absent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import ConfigError

__all__ = ["MAX_KEY_CHARS", "MAX_WEIGHT", "flow_meta", "partition_key", "validate_partition_by"]

MAX_KEY_CHARS = 200
MAX_WEIGHT = 1_000_000
_SOURCES = ("args.", "meta.")


def validate_partition_by(value: Any) -> tuple[str, ...]:
    """``partition_by`` as a tuple; a bad one raises :class:`ConfigError` naming the field."""
    if value is None or value == ():
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"partition_by must be a list of 'worker', 'args.KEY' or 'meta.KEY', got {value!r}")
    for item in value:
        if not isinstance(item, str) or not (
            item == "worker" or (item.startswith(_SOURCES) and len(item) > len("args."))
        ):
            raise ConfigError(
                f"partition_by entries must be 'worker', 'args.KEY' or 'meta.KEY', got {item!r}"
            )
    return tuple(value)


def partition_key(worker: str, spec: tuple[str, ...], args: Any, meta: Any) -> str:
    """The partition key of a job of ``worker`` with ``args`` and ``meta`` under ``spec``."""
    values: list[Any] = []
    for item in spec:
        if item == "worker":
            values.append(worker)
            continue
        source = args if item.startswith("args.") else meta
        values.append(source.get(item[5:]) if isinstance(source, Mapping) else None)
    key = orjson.dumps(values, option=orjson.OPT_NON_STR_KEYS).decode()
    if len(key) > MAX_KEY_CHARS:
        key = "#" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return key


def flow_meta(
    worker: str, spec: tuple[str, ...], args: Any, meta: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """``meta`` with ``partition_key`` and ``weight`` set from ``spec`` and the ``new`` options."""
    result = dict(meta)
    explicit = options.get("partition")
    if explicit is not None:
        if not isinstance(explicit, str) or not 0 < len(explicit) <= MAX_KEY_CHARS:
            raise ConfigError(
                f"partition must be a string of 1..{MAX_KEY_CHARS} characters, got {explicit!r}"
            )
        result["partition_key"] = explicit
    elif spec:
        result["partition_key"] = partition_key(worker, spec, args, meta)
    weight = options.get("weight")
    if weight is not None:
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
            raise ConfigError(f"weight must be an integer 1..{MAX_WEIGHT}, got {weight!r}")
        result["weight"] = weight
    return result
