"""The lifeline: rescues jobs whose node died, judged by heartbeats rather than by elapsed time.

Every producer heartbeats into the producers table. An executing job is an orphan once the
producer that claimed it has been silent for ``rescue_window`` seconds (or has said goodbye);
a long job on a healthy node is never touched, however long it runs. ``rescue_after`` remains as a
backstop for jobs that have been executing implausibly long anyway. Orphans go back to
``available`` (or ``discarded`` when out of attempts) with ``meta.rescued`` counted; the late ack
of a node that was merely frozen is then refused by the completer's fence.

It runs on every node, not only the leader: when the leader itself dies, its orphans (and
everyone else's) must not wait for its lease to expire and a new leader to be elected. Nodes
never rescue a job twice between them: the statement locks the orphans it takes (``FOR UPDATE
SKIP LOCKED``, so concurrent rounds split them) and re-checks that each is still ``executing``
under the claim it read. Its cost is one indexed statement per node per ``interval`` over the
executing jobs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..lifecycle import Clock
from ..options import MAX_SECONDS, positive_seconds
from ..store import channel_name
from . import PluginContext

__all__ = ["BEATS_PER_WINDOW", "DEFAULT_HEARTBEAT", "MIN_HEARTBEAT", "Lifeline", "heartbeat_for"]

#: How many heartbeats a node must send per rescue window at least: a node beating less often
#: looks dead between beats, and its own live jobs are rescued and run a second time, concurrently.
BEATS_PER_WINDOW = 3
#: The heartbeat interval when none is given and the rescue window allows it.
DEFAULT_HEARTBEAT = 2.0
#: The shortest heartbeat interval: each beat is a statement per node.
MIN_HEARTBEAT = 0.01


@dataclass
class Lifeline:
    """Runs on every node every ``interval`` seconds (``leader_only=True``: on the leader only)."""

    rescue_window: float = 15.0
    rescue_after: float = 3600.0
    interval: float = 5.0
    limit: int = 5000
    name: str = "lifeline"
    leader_only: bool = False

    def __post_init__(self) -> None:
        for field_name in ("rescue_window", "rescue_after", "interval", "limit"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"lifeline {field_name} must be a positive number, got {value!r}")
            if field_name != "limit" and not value <= MAX_SECONDS:
                # A window of 1e300 s would overflow now() - window and silently disable rescue.
                raise ConfigError(
                    f"lifeline {field_name} must be at most {MAX_SECONDS:g} seconds, got {value!r}"
                )

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


def heartbeat_for(interval: float | None, plugins: Iterable[object]) -> float:
    """The heartbeat interval for a node running ``plugins``: ``interval`` checked against the
    rescue window of any :class:`Lifeline` among them, or (``None``) the default, shortened to fit.

    Never below :data:`MIN_HEARTBEAT`: a heartbeat of (nearly) 0 is a busy loop of statements."""
    windows = [plugin.rescue_window for plugin in plugins if isinstance(plugin, Lifeline)]
    ceiling = min(windows) / BEATS_PER_WINDOW if windows else None
    if ceiling is not None and ceiling < MIN_HEARTBEAT:
        raise ConfigError(
            f"the lifeline's rescue_window must be at least {MIN_HEARTBEAT * BEATS_PER_WINDOW:g} s "
            f"({BEATS_PER_WINDOW} heartbeats of at least {MIN_HEARTBEAT:g} s), got {min(windows)!r}"
        )
    if interval is None:
        return DEFAULT_HEARTBEAT if ceiling is None else min(DEFAULT_HEARTBEAT, ceiling)
    beat = positive_seconds(interval, "heartbeat_interval")
    if beat < MIN_HEARTBEAT:
        raise ConfigError(f"heartbeat_interval must be at least {MIN_HEARTBEAT:g} s, got {interval!r}")
    if ceiling is not None and beat > ceiling:
        raise ConfigError(
            f"heartbeat_interval must be at most the lifeline's rescue_window / {BEATS_PER_WINDOW} "
            f"({ceiling:g} s), got {interval!r}: a node beating less often has its live jobs rescued"
        )
    return beat
