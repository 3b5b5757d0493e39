"""Heartbeats: each node's producers tell the database they are alive, so the lifeline can tell a
dead node's jobs from a slow node's."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from .lifecycle import SYSTEM_CLOCK, Clock, describe_error
from .store import queries_for

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["Heartbeat"]

_log = logging.getLogger("pgqueue.heartbeat")


class Heartbeat:
    """Upserts one row per live producer every ``interval`` seconds. A lifecycle Service."""

    name = "heartbeat"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        node: str,
        producers: Callable[[], Sequence[Producer]],
        *,
        interval: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pool = pool
        self.queries = queries_for(schema)
        self.node = node
        self.producers = producers
        self.interval = interval
        self.clock = clock

    async def run(self) -> None:
        # Retried at the heartbeat's own pace, not with the usual growing backoff: a live node whose
        # heartbeats lapse for longer than the rescue window would have its own jobs rescued.
        while True:
            try:
                await self.beat(self.producers())
            except Exception as exc:
                _log.warning(
                    "pgqueue heartbeat failed (%s); retrying in %.1fs", describe_error(exc), self.interval
                )
            await self.clock.sleep(self.interval)

    async def beat(self, producers: Sequence[Producer]) -> None:
        """Say that ``producers`` are alive (registering any that are new)."""
        if not producers:
            return
        params = {
            "node": self.node,
            "uuid": [p.uuid for p in producers],
            "queue": [p.queue for p in producers],
            "meta": [
                json.dumps({"limit": p.config.limit, "paused": p.config.paused, "running": len(p.running)})
                for p in producers
            ],
        }
        async with self.pool.connection() as conn:
            await conn.execute(self.queries.producers_heartbeat, params)

    async def register(self, producer: Producer) -> None:
        await self.beat([producer])

    async def goodbye(self, producers: Sequence[Producer]) -> None:
        """Remove the rows of stopped producers: whatever they left executing is rescued at once."""
        if not producers:
            return
        async with self.pool.connection() as conn:
            await conn.execute(self.queries.producers_delete, {"uuid": [p.uuid for p in producers]})
