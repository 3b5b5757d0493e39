"""The reindexer: rebuilds pgqueue's indexes concurrently on a schedule, to shed bloat."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..cron import next_at, parse
from ..errors import ConfigError
from ..lifecycle import Clock
from ..options import positive_seconds
from ..pooler import apooled
from ..store import drop_index, reindex_index
from . import PluginContext

__all__ = ["INDEXES", "Reindexer"]

#: The jobs table's indexes that churn with every job.
INDEXES = (
    "jobs_fetch_idx",
    "jobs_stage_idx",
    "jobs_executing_idx",
    "jobs_completed_idx",
    "jobs_cancelled_idx",
    "jobs_discarded_idx",
    "jobs_unique_idx",
    "jobs_pkey",
)


#: PostgreSQL's statement_timeout is an int of milliseconds.
_MAX_STATEMENT_TIMEOUT = (2**31 - 1) // 1000


@dataclass
class Reindexer:
    """Leader-only; on ``schedule`` (a cron expression, in ``timezone``) drops indexes an earlier
    interrupted rebuild left invalid, then ``REINDEX INDEX CONCURRENTLY`` each of ``indexes``."""

    schedule: str = "@midnight"
    timezone: str = "Etc/UTC"
    indexes: Sequence[str] = INDEXES
    timeout: float = 600.0
    name: str = "reindexer"
    leader_only: bool = True

    def __post_init__(self) -> None:
        self._expression = parse(self.schedule)
        self.timeout = positive_seconds(self.timeout, "reindexer timeout")
        if self.timeout > _MAX_STATEMENT_TIMEOUT:
            # It becomes statement_timeout, in milliseconds that must fit an integer.
            raise ConfigError(
                f"reindexer timeout must be at most {_MAX_STATEMENT_TIMEOUT} seconds, got {self.timeout!r}"
            )

    def next_delay(self, clock: Clock) -> float:
        now = datetime.now(UTC)
        return max((next_at(self._expression, now, self.timezone) - now).total_seconds(), 0.0) + 0.01

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        started = time.monotonic()
        # REINDEX CONCURRENTLY can't run inside a transaction: a short-lived autocommit connection.
        async with await psycopg.AsyncConnection.connect(ctx.conninfo, autocommit=True) as conn:
            if await apooled(conn):
                # The timeout below is a session setting: through a transaction pooler it would
                # stay behind on a server session other clients get next, and not reach REINDEX.
                raise ConfigError(
                    "the reindexer needs a session of its own: behind a connection pooler, give the "
                    "runtime direct_conninfo (--direct-dsn) reaching PostgreSQL directly"
                )
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (f"{int(self.timeout * 1000)}",)
            )
            rows = await (await conn.execute(ctx.queries.invalid_indexes, {"schema": ctx.schema})).fetchall()
            # Only the leftovers of an interrupted rebuild (…_ccnew, …_ccold), never an original.
            dropped = [row[0] for row in rows if "_ccnew" in row[0] or "_ccold" in row[0]]
            for index in dropped:
                await conn.execute(drop_index(ctx.schema, index))
            for index in self.indexes:
                await conn.execute(reindex_index(ctx.schema, index))
        return {
            "reindexed": list(self.indexes),
            "dropped_invalid": dropped,
            "seconds": time.monotonic() - started,
        }
