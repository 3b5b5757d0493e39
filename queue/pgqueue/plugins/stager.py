"""The stager: makes due scheduled and retryable jobs available, and wakes their queues."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..lifecycle import Clock
from ..options import positive_seconds
from ..store import channel_name
from . import PluginContext

__all__ = ["Stager"]


@dataclass
class Stager:
    """Leader-only; every ``interval`` seconds moves at most ``limit`` due jobs to ``available``."""

    interval: float = 1.0
    limit: int = 5000
    name: str = "stager"
    leader_only: bool = True

    def __post_init__(self) -> None:
        self.interval = positive_seconds(self.interval, "stager interval")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError(f"stager limit must be a positive integer, got {self.limit!r}")

    def next_delay(self, clock: Clock) -> float:
        return self.interval

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        params = {
            "until": None,
            "queue": None,
            "limit": self.limit,
            "channel": channel_name(ctx.schema, "insert"),
            "notify": True,
        }
        async with ctx.pool.connection() as conn:
            rows = await (await conn.execute(ctx.queries.stage_jobs, params)).fetchall()
        queues = sorted({row[1] for row in rows})
        # pg_notify reaches every node that can hear; this node's own producers are woken
        # directly as well, in case this node can't (polling mode).
        for queue in queues:
            ctx.wake_queue(queue)
        return {"staged_count": len(rows), "queues": queues}
