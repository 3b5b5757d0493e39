"""The pruner: deletes finished jobs older than ``max_age``, and workflow signals no step needs
any more, in bounded batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import ConfigError
from ..lifecycle import Clock
from ..options import MAX_SECONDS
from . import PluginContext

__all__ = ["Pruner"]


@dataclass
class Pruner:
    """Leader-only; every ``interval`` seconds deletes at most ``limit`` jobs that finished
    (completed, cancelled or discarded) more than ``max_age`` seconds ago, and at most ``limit``
    batches that finished that long ago. A job's result is deleted with its row: ``max_age`` is
    also how long results can be awaited and read.

    It also deletes at most ``limit`` workflow signals a run: those a step received, once sent
    more than ``max_age`` ago, and any sent more than ``signal_max_age`` seconds ago (7 days by
    default), received or not, so a signal nobody waits for is kept that long for a step that
    starts waiting later.

    A full batch means more are waiting: the next one follows after ``catch_up_interval``
    instead, so a queue finishing more than ``limit / interval`` jobs a second (333 with the
    defaults) doesn't outgrow its pruner, while each batch stays a short transaction.
    """

    max_age: float | timedelta = 60.0
    signal_max_age: float | timedelta = 7 * 86400.0
    interval: float = 30.0
    limit: int = 10_000
    catch_up_interval: float = 1.0
    name: str = "pruner"
    leader_only: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_age, timedelta):
            self.max_age = self.max_age.total_seconds()
        if isinstance(self.signal_max_age, timedelta):
            self.signal_max_age = self.signal_max_age.total_seconds()
        for field_name in ("max_age", "signal_max_age", "interval", "limit", "catch_up_interval"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"pruner {field_name} must be a positive number, got {value!r}")
            if field_name != "limit" and not value <= MAX_SECONDS:
                raise ConfigError(
                    f"pruner {field_name} must be at most {MAX_SECONDS:g} seconds, got {value!r}"
                )
        self._behind = False

    def next_delay(self, clock: Clock) -> float:
        return float(min(self.catch_up_interval, self.interval) if self._behind else self.interval)

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        async with ctx.pool.connection() as conn:
            cursor = await conn.execute(
                ctx.queries.prune_jobs, {"max_age": self.max_age, "limit": int(self.limit)}
            )
            rows = await cursor.fetchall()
            cursor = await conn.execute(
                ctx.queries.workflow_signals_prune,
                {"max_age": self.max_age, "signal_max_age": self.signal_max_age, "limit": int(self.limit)},
            )
            signals = await cursor.fetchall()
        self._behind = max(len(rows), len(signals)) >= int(self.limit)
        return {"pruned_count": len(rows), "pruned_signals": len(signals)}
