"""Plugins: periodic work that keeps the queue healthy (most of it leader-only).

A plugin says when it next wants to run (:meth:`Plugin.next_delay`) and does one round of work
(:meth:`Plugin.run_once`); :class:`PluginRunner` turns it into a background service with the shared
lifecycle: it skips rounds while this node isn't the leader (for ``leader_only`` plugins), emits
telemetry for every round, and logs and backs off when a round fails instead of stopping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg_pool import AsyncConnectionPool

from .. import telemetry
from ..lifecycle import SYSTEM_CLOCK, Backoff, Clock, describe_error
from ..notifier import Notifier
from ..store import Queries, queries_for

__all__ = ["Plugin", "PluginContext", "PluginRunner"]

_log = logging.getLogger("pgqueue.plugins")


@dataclass
class PluginContext:
    """What a plugin may use: the pool, the schema's statements, the notifier and leadership."""

    pool: AsyncConnectionPool[Any]
    #: for the rare statement that needs its own connection (REINDEX CONCURRENTLY)
    conninfo: str
    schema: str
    node: str
    notifier: Notifier
    is_leader: Callable[[], bool]
    #: wake this node's producer of a queue directly (needed when notifications can't be heard)
    wake_queue: Callable[[str], None]
    clock: Clock = SYSTEM_CLOCK

    @property
    def queries(self) -> Queries:
        return queries_for(self.schema)


class Plugin(Protocol):
    """One kind of periodic work. ``name`` appears in logs and telemetry."""

    name: str
    leader_only: bool

    def next_delay(self, clock: Clock) -> float:
        """Seconds until the next round."""
        ...

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        """Do one round; the returned mapping is the telemetry metadata of the round."""
        ...


class PluginRunner:
    """Runs a :class:`Plugin` forever as a :class:`~pgqueue.lifecycle.Service`."""

    def __init__(self, plugin: Plugin, ctx: PluginContext) -> None:
        self.plugin = plugin
        self.ctx = ctx
        self.rounds = 0

    @property
    def name(self) -> str:
        return f"plugin[{self.plugin.name}]"

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        failures = 0
        clock = self.ctx.clock
        while True:
            await clock.sleep(
                self.plugin.next_delay(clock) if failures == 0 else backoff.delay(failures, clock.random())
            )
            if self.plugin.leader_only and not self.ctx.is_leader():
                continue
            started = clock.monotonic()
            try:
                meta = await self.plugin.run_once(self.ctx)
            except Exception as exc:
                failures += 1
                _log.warning("pgqueue %s failed (%s)", self.name, describe_error(exc))
                telemetry.emit(
                    ("plugin", "exception"),
                    {"duration": clock.monotonic() - started},
                    {"plugin": self.plugin.name, "error": describe_error(exc)},
                )
                continue
            failures = 0
            self.rounds += 1
            telemetry.emit(
                ("plugin", "stop"),
                {"duration": clock.monotonic() - started},
                {"plugin": self.plugin.name, **meta},
            )
