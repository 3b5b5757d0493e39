"""How a queue runs: its limits on this node and across the cluster, validated in one place.

``limit`` is the local concurrency (jobs running at once on this node). The cluster-wide limits
are enforced by the fetch itself (see ``queries/fetch_limited.sql``): ``global_limit`` jobs
executing at once on every node together, and ``rate_limit`` units started per ``rate_period``
seconds (a sliding window; a job weighs ``meta.weight`` units, 1 by default). With ``partitioned``
both apply per partition key (a job's ``meta.partition_key``, set from its worker's
``partition_by``) instead of per queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError
from .options import validate_queue

__all__ = ["MAX_LIMIT", "MAX_RATE_PERIOD", "QueueConfig"]

MAX_LIMIT = 10_000
#: the longest rate period, in seconds (one day)
MAX_RATE_PERIOD = 86_400.0
_MAX_GLOBAL = 1_000_000
_MAX_RATE = 1_000_000_000
_OPTIONS = ("limit", "paused", "global_limit", "rate_limit", "rate_period", "partitioned")


@dataclass
class QueueConfig:
    """How a queue runs: its local limit, cluster-wide limits and whether it is paused."""

    limit: int
    paused: bool = False
    global_limit: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    partitioned: bool = False

    @property
    def limited(self) -> bool:
        """True when the fetch must admit jobs against cluster-wide limits."""
        return self.global_limit is not None or self.rate_limit is not None

    @classmethod
    def parse(cls, queue: str, value: Any) -> QueueConfig:
        """``10`` or ``{"limit": 10, "global_limit": 3, "rate_limit": 50, "rate_period": 1}``.

        Errors name the queue and the field, and say what would be valid."""
        validate_queue(queue)
        if isinstance(value, QueueConfig):
            return cls.parse(queue, {f.name: getattr(value, f.name) for f in fields(value)})
        if isinstance(value, dict):
            unknown = set(value) - set(_OPTIONS)
            if unknown:
                raise ConfigError(
                    f"queue {queue!r}: unknown option {sorted(unknown)[0]!r} (valid: {', '.join(_OPTIONS)})"
                )
            options = dict(value)
        else:
            options = {"limit": value}
        limit = _integer(queue, "limit", options.get("limit"), MAX_LIMIT)
        global_limit = _optional_integer(queue, "global_limit", options.get("global_limit"), _MAX_GLOBAL)
        rate_limit = _optional_integer(queue, "rate_limit", options.get("rate_limit"), _MAX_RATE)
        rate_period = options.get("rate_period")
        if rate_limit is not None and rate_period is None:
            rate_period = 1.0
        if rate_period is not None:
            if rate_limit is None:
                raise ConfigError(f"queue {queue!r}: rate_period needs a rate_limit")
            if (
                not isinstance(rate_period, int | float)
                or isinstance(rate_period, bool)
                or not math.isfinite(rate_period)
                or not 0 < rate_period <= MAX_RATE_PERIOD
            ):
                raise ConfigError(
                    f"queue {queue!r}: rate_period must be a number of seconds greater than 0 and at "
                    f"most {MAX_RATE_PERIOD:g}, got {rate_period!r}"
                )
            rate_period = float(rate_period)
        paused = _boolean(queue, "paused", options.get("paused", False))
        partitioned = _boolean(queue, "partitioned", options.get("partitioned", False))
        if partitioned and global_limit is None and rate_limit is None:
            raise ConfigError(f"queue {queue!r}: partitioned needs a global_limit or a rate_limit")
        return cls(limit, paused, global_limit, rate_limit, rate_period, partitioned)

    def with_changes(self, queue: str, **changes: Any) -> QueueConfig:
        """A validated copy with ``changes`` applied (``None`` clears an optional limit)."""
        return QueueConfig.parse(queue, replace(self, **changes))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _integer(queue: str, name: str, value: Any, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ConfigError(f"queue {queue!r}: {name} must be an integer 1..{maximum}, got {value!r}")
    return value


def _optional_integer(queue: str, name: str, value: Any, maximum: int) -> int | None:
    return None if value is None else _integer(queue, name, value, maximum)


def _boolean(queue: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"queue {queue!r}: {name} must be true or false, got {value!r}")
    return value
