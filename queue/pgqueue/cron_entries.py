"""Cron entries declared in the database: list, add, update and delete them, sync or async.

A row of ``pgqueue_cron`` says: at each minute matching ``expression`` (five fields or a nickname)
on the wall clock of ``timezone``, insert a job of ``worker`` (its registry name) with ``args``,
optionally into another ``queue``, with another ``priority`` or ``max_attempts``, while
``enabled``. The leader's :class:`~pgqueue.plugins.cron.Cron` plugin (``database=True``) reads the
table every minute, so changes need no restart; each entry fires at most once per minute across
the cluster (the job is unique on the entry's name and the minute).

Everything is validated before anything is written: a malformed expression or time zone raises
:class:`~pgqueue.errors.ConfigError` naming the field, and the row is left as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from . import options as opt
from .cron import now_matches, parse
from .errors import ConfigError, PgQueueError
from .store import queries_for
from .targets import async_connection, sync_connection

__all__ = [
    "CronNotFoundError",
    "CronRow",
    "aadd_cron",
    "add_cron",
    "adelete_cron",
    "alist_crons",
    "aupdate_cron",
    "delete_cron",
    "list_crons",
    "update_cron",
]

_FIELDS = ("expression", "timezone", "worker", "args", "queue", "priority", "max_attempts", "enabled")


class CronNotFoundError(PgQueueError, LookupError):
    """No cron entry of that name is declared in the database."""


@dataclass(frozen=True, slots=True)
class CronRow:
    """A cron entry declared in the database (see the module docstring)."""

    name: str
    expression: str
    worker: str
    args: dict[str, Any] = field(default_factory=dict)
    timezone: str = "Etc/UTC"
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    enabled: bool = True

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> CronRow:
        name, expression, timezone, worker, args, queue, priority, max_attempts, enabled = row
        return cls(name, expression, worker, args, timezone, queue, priority, max_attempts, enabled)

    def validated(self) -> CronRow:
        """This entry, checked field by field; a bad one raises ConfigError naming it."""
        where = f"cron entry {self.name!r}"
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 128:
            raise ConfigError(f"cron entry name must be a string of 1..128 characters, got {self.name!r}")
        try:
            if not isinstance(self.expression, str):
                raise ConfigError(f"expression must be a string, got {self.expression!r}")
            parse(self.expression)
            if not isinstance(self.timezone, str):
                raise ConfigError(f"timezone must be an IANA name, got {self.timezone!r}")
            now_matches(parse("* * * * *"), datetime.now(UTC), self.timezone)
            if not isinstance(self.worker, str) or not 0 < len(self.worker) <= 255:
                raise ConfigError(f"worker must be a worker's name (1..255 characters), got {self.worker!r}")
            try:
                opt.encode_json_object(self.args, "args")
            except TypeError as exc:
                raise ConfigError(str(exc)) from None
            if self.queue is not None:
                opt.validate_queue(self.queue)
            if self.priority is not None:
                opt.validate_priority(self.priority)
            if self.max_attempts is not None:
                opt.validate_max_attempts(self.max_attempts)
            if not isinstance(self.enabled, bool):
                raise ConfigError(f"enabled must be true or false, got {self.enabled!r}")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return self

    def options(self) -> dict[str, Any]:
        """The ``Worker.new`` options this entry sets."""
        chosen = {"queue": self.queue, "priority": self.priority, "max_attempts": self.max_attempts}
        return {key: value for key, value in chosen.items() if value is not None}

    def params(self) -> dict[str, Any]:
        values = asdict(self)
        values["args"] = orjson.dumps(self.args).decode()
        return values


def _new(name: str, expression: str, worker: str, options: dict[str, Any]) -> CronRow:
    unknown = set(options) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"cron entry {name!r}: unknown option {sorted(unknown)[0]!r}")
    return CronRow(name, expression, worker, **options).validated()


def _merge(row: tuple[Any, ...] | None, name: str, changes: dict[str, Any]) -> CronRow:
    if row is None:
        raise CronNotFoundError(f"cron entry {name!r} does not exist")
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"cron entry {name!r}: unknown option {sorted(unknown)[0]!r}")
    return replace(CronRow.from_row(row), **changes).validated()


# -- sync ------------------------------------------------------------------------------------------


def list_crons(target: Any, *, schema: str = "public", enabled_only: bool = False) -> list[CronRow]:
    """Every cron entry declared in ``schema``, by name."""
    conn = sync_connection(target)
    rows = conn.execute(queries_for(schema).cron_list, {"enabled_only": enabled_only}).fetchall()
    return [CronRow.from_row(row) for row in rows]


def add_cron(
    target: Any, name: str, expression: str, worker: str, *, schema: str = "public", **options: Any
) -> CronRow:
    """Declare cron entry ``name`` (options: args, timezone, queue, priority, max_attempts, enabled)."""
    entry = _new(name, expression, worker, options)
    conn = sync_connection(target)
    if conn.execute(queries_for(schema).cron_add, entry.params()).fetchone() is None:
        raise ConfigError(f"cron entry {name!r} exists already (update it instead)")
    return entry


def update_cron(target: Any, name: str, *, schema: str = "public", **changes: Any) -> CronRow:
    """Change some fields of cron entry ``name``."""
    queries = queries_for(schema)
    conn = sync_connection(target)
    with conn.transaction():
        entry = _merge(conn.execute(queries.cron_get, {"name": name}).fetchone(), name, changes)
        conn.execute(queries.cron_update, entry.params())
    return entry


def delete_cron(target: Any, name: str, *, schema: str = "public") -> None:
    """Forget cron entry ``name``; CronNotFoundError when there is none."""
    conn = sync_connection(target)
    if conn.execute(queries_for(schema).cron_delete, {"name": name}).fetchone() is None:
        raise CronNotFoundError(f"cron entry {name!r} does not exist")


# -- async -----------------------------------------------------------------------------------------


async def alist_crons(target: Any, *, schema: str = "public", enabled_only: bool = False) -> list[CronRow]:
    """The async twin of :func:`list_crons`."""
    conn = await async_connection(target)
    cursor = await conn.execute(queries_for(schema).cron_list, {"enabled_only": enabled_only})
    return [CronRow.from_row(row) for row in await cursor.fetchall()]


async def aadd_cron(
    target: Any, name: str, expression: str, worker: str, *, schema: str = "public", **options: Any
) -> CronRow:
    """The async twin of :func:`add_cron`."""
    entry = _new(name, expression, worker, options)
    conn = await async_connection(target)
    if await (await conn.execute(queries_for(schema).cron_add, entry.params())).fetchone() is None:
        raise ConfigError(f"cron entry {name!r} exists already (update it instead)")
    return entry


async def aupdate_cron(target: Any, name: str, *, schema: str = "public", **changes: Any) -> CronRow:
    """The async twin of :func:`update_cron`."""
    queries = queries_for(schema)
    conn = await async_connection(target)
    async with conn.transaction():
        row = await (await conn.execute(queries.cron_get, {"name": name})).fetchone()
        entry = _merge(row, name, changes)
        await conn.execute(queries.cron_update, entry.params())
    return entry


async def adelete_cron(target: Any, name: str, *, schema: str = "public") -> None:
    """The async twin of :func:`delete_cron`."""
    conn = await async_connection(target)
    if await (await conn.execute(queries_for(schema).cron_delete, {"name": name})).fetchone() is None:
        raise CronNotFoundError(f"cron entry {name!r} does not exist")
