"""The lifeline: rescues jobs whose node died, judged by heartbeats rather than by elapsed time.

Every producer heartbeats into the producers table. An executing job is an orphan once the
producer that claimed it has been silent for ``rescue_window`` seconds (or has said goodbye);
a long job on a healthy node is never touched, however long it runs. ``rescue_after`` remains as a
backstop for jobs that have been executing implausibly long anyway. Orphans go back to
``available`` (or ``discarded`` when out of attempts) with ``meta.rescued`` counted; the late ack
of a node that was merely frozen is then refused by the completer's fence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..lifecycle import Clock
from ..store import channel_name
from . import PluginContext

__all__ = ["Lifeline"]


@dataclass
class Lifeline:
    """Leader-only; runs every ``interval`` seconds."""

    rescue_window: float = 15.0
    rescue_after: float = 3600.0
    interval: float = 5.0
    limit: int = 5000
    name: str = "lifeline"
    leader_only: bool = True

    def __post_init__(self) -> None:
        for field_name in ("rescue_window", "rescue_after", "interval", "limit"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"lifeline {field_name} must be a positive number, got {value!r}")

    def next_delay(self, clock: Clock) -> float:
        return self.interval

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        params = {
            "window": self.rescue_window,
            "rescue_after": self.rescue_after,
            "limit": self.limit,
            "channel": channel_name(ctx.schema, "insert"),
        }
        async with ctx.pool.connection() as conn:
            rows = await (await conn.execute(ctx.queries.rescue_jobs, params)).fetchall()
            # Producers silent for far longer than the window are gone for good.
            await conn.execute(ctx.queries.producers_prune, {"older_than": max(self.rescue_window * 20, 600)})
        for queue in {row[1] for row in rows if row[2] == "available"}:
            ctx.wake_queue(queue)
        return {
            "rescued_jobs": [row[0] for row in rows if row[2] == "available"],
            "discarded_jobs": [row[0] for row in rows if row[2] == "discarded"],
        }
