"""Cron: insert jobs on a schedule, each scheduled minute at most once across the cluster.

Only the leader inserts, but leadership can change in the middle of a minute; what guarantees
"at most once" is the database: every cron job carries ``meta.cron_name`` and ``meta.cron_at``
(the entry and the minute) and is unique on them forever, so a second insert of the same entry for
the same minute (by a new leader, or after a restart) is a conflict, not a duplicate.

With ``database=True`` the entries declared in the ``pgqueue_cron`` table (see
:mod:`pgqueue.cron_entries`) are read every round, in the same transaction as the insert, and
fire alongside the code's; an entry's name is its identity, in the table and in the code alike.
A row that can't fire (a worker not loaded on the leader, a hand-written malformed row) is
skipped with a warning; the others fire.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..cron import CronExpression, minute_floor, now_matches, parse
from ..cron_entries import CronRow, alist_crons
from ..errors import ConfigError
from ..insert import ainsert_all
from ..job import NewJob
from ..lifecycle import Clock
from ..worker import Worker, registry
from . import PluginContext

_log = logging.getLogger("pgqueue.cron")
#: seconds from boot to the first round
_FIRST_ROUND = 1.0

__all__ = ["Cron", "CronEntry"]

_CRON_UNIQUE = {
    "fields": ["worker", "meta"],
    "keys": ["cron_name", "cron_at"],
    "period": None,
    "states": "all",
    "timestamp": "inserted_at",
}


@dataclass(frozen=True)
class CronEntry:
    """``expression`` (five fields or a nickname) runs ``worker`` with ``args`` in ``timezone``.

    ``options`` are job options for ``Worker.new`` (queue, priority, max_attempts, tags, meta).
    """

    expression: str
    worker: type[Worker]
    args: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "Etc/UTC"
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.worker, type) and issubclass(self.worker, Worker)):
            raise ConfigError(
                f"cron entry {self.expression!r}: worker must be a Worker subclass, got {self.worker!r}"
            )
        bad = set(self.options) & {"unique", "schedule_in", "scheduled_at", "replace"}
        if bad:
            raise ConfigError(
                f"cron entry {self.expression!r}: option {sorted(bad)[0]!r} can't be used with cron"
            )
        parse(self.expression)
        now_matches(parse("* * * * *"), datetime.now(UTC), self.timezone)  # validates the time zone
        self.worker.new(dict(self.args), **self.options)  # validates args and options now, not at 3 a.m.

    @property
    def cron_name(self) -> str:
        if self.name:
            return self.name
        identity = json.dumps(
            [self.expression, self.worker.name, dict(self.args), dict(self.options), self.timezone],
            sort_keys=True,
            default=str,
        )
        return hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()


@dataclass
class Cron:
    """Leader-only; wakes at each minute boundary and inserts the entries due in that minute."""

    entries: Sequence[CronEntry] = ()
    #: also fire the entries declared in the database's pgqueue_cron table
    database: bool = False
    name: str = "cron"
    leader_only: bool = True

    def __post_init__(self) -> None:
        self._parsed: list[tuple[CronEntry, CronExpression]] = [
            (e, parse(e.expression)) for e in self.entries
        ]
        names = [e.cron_name for e in self.entries]
        if len(set(names)) != len(names):
            raise ConfigError(
                "cron entries must be distinct (same expression, worker, args and options twice)"
            )
        self._rebooted = False
        #: declared entries already warned about, so a bad row is logged once, not every minute
        self._warned: set[tuple[str, str]] = set()

    def next_delay(self, clock: Clock) -> float:
        if not self._rebooted:
            # The first round comes soon after boot, so @reboot entries fire when the node starts
            # (and the current minute, if due and not inserted yet by an earlier leader).
            return _FIRST_ROUND
        # Just past the next minute boundary of the wall clock.
        return 60.0 - (time.time() % 60.0) + 0.01

    def declared(self, rows: Sequence[CronRow]) -> list[tuple[CronEntry, CronExpression]]:
        """The database's entries that can fire here (the others are logged once and skipped)."""
        code_names = {entry.cron_name for entry, _ in self._parsed}
        usable = []
        for row in rows:
            try:
                worker = registry.get(row.worker)
                if worker is None:
                    raise ConfigError(f"worker {row.worker!r} is not loaded on this node")
                if row.name in code_names:
                    raise ConfigError("an entry of the code has the same name")
                entry = CronEntry(row.expression, worker, row.args, row.timezone, row.options(), row.name)
                usable.append((entry, parse(row.expression)))
            except (ConfigError, TypeError, ValueError) as exc:
                warning = (row.name, str(exc))
                if warning not in self._warned:
                    self._warned.add(warning)
                    _log.warning("pgqueue cron: entry %r of the database skipped: %s", row.name, exc)
        return usable

    def due(
        self,
        instant: datetime,
        *,
        reboot: bool,
        declared: Sequence[tuple[CronEntry, CronExpression]] = (),
    ) -> list[NewJob]:
        """The jobs to insert for the minute of ``instant``."""
        minute = minute_floor(instant.astimezone(UTC))
        jobs = []
        for entry, expression in [*self._parsed, *declared]:
            if expression.reboot:
                if not reboot:
                    continue
                at = "reboot"
            elif now_matches(expression, minute, entry.timezone):
                at = minute.isoformat()
            else:
                continue
            meta = {
                **dict(entry.options.get("meta", {})),
                "cron": True,
                "cron_expr": entry.expression,
                "cron_name": entry.cron_name,
                "cron_tz": entry.timezone,
                "cron_at": at,
            }
            options = {**entry.options, "meta": meta, "unique": _CRON_UNIQUE}
            jobs.append(entry.worker.new(dict(entry.args), **options))
        return jobs

    async def run_once(self, ctx: PluginContext) -> Mapping[str, Any]:
        now = datetime.now(UTC)
        async with ctx.pool.connection() as conn:
            async with conn.transaction():
                declared = (
                    self.declared(await alist_crons(conn, schema=ctx.schema, enabled_only=True))
                    if self.database
                    else []
                )
                jobs = self.due(now, reboot=not self._rebooted, declared=declared)
                saved = await ainsert_all(conn, jobs, schema=ctx.schema) if jobs else []
        self._rebooted = True
        inserted = sum(1 for job in saved if not job.conflict)
        return {"inserted": inserted, "conflicts": len(saved) - inserted}
