"""Queues declared in the database: list, add, update and delete them, sync or async.

A row of ``pgqueue_queues`` gives a queue its local limit, cluster-wide limits and paused state.
Every change is written together with a ``configure`` signal in one transaction (the caller's, as
a savepoint when one is open): running nodes re-read the row when it commits, and nothing is
half-applied when it doesn't. Nodes started from the table (``Runtime(queues=None,
queues_from_database=True)``, ``python -m pgqueue start`` without ``--queues``) also start and
stop queues as rows come and go; a node running a queue from its own code takes the row's
settings whenever the row exists.

Bad values raise :class:`~pgqueue.errors.ConfigError` naming the field; an unknown queue raises
:class:`QueueNotFoundError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from .errors import ConfigError, PgQueueError
from .queue_config import QueueConfig
from .store import channel_name, queries_for
from .targets import async_connection, sync_connection

__all__ = [
    "CONFIGURE",
    "QueueInfo",
    "QueueNotFoundError",
    "aadd_queue",
    "add_queue",
    "adelete_queue",
    "aget_queue",
    "alist_queues",
    "aupdate_queue",
    "delete_queue",
    "get_queue",
    "list_queues",
    "update_queue",
]

#: the signal action that makes nodes re-read a queue's row
CONFIGURE = "configure"
_CHANGEABLE = frozenset({"limit", "global_limit", "rate_limit", "rate_period", "partitioned", "paused"})


class QueueNotFoundError(PgQueueError, LookupError):
    """No queue of that name is declared in the database."""


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue declared in the database."""

    name: str
    config: QueueConfig
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> QueueInfo:
        name, limit, global_limit, rate_limit, rate_period, partitioned, paused, updated_at = row
        config = QueueConfig(limit, paused, global_limit, rate_limit, rate_period, partitioned)
        return cls(name, config, updated_at)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.config.as_dict()}


def _params(name: str, config: QueueConfig) -> dict[str, Any]:
    return {"name": name, **config.as_dict()}


def _signal(schema: str, name: str) -> dict[str, Any]:
    return {
        "action": CONFIGURE,
        "queue": name,
        "node": None,
        "params": orjson.dumps({}).decode(),
        "channel": channel_name(schema, "signal"),
    }


def _merge(info: QueueInfo | None, name: str, changes: dict[str, Any]) -> QueueConfig:
    if info is None:
        raise QueueNotFoundError(f"queue {name!r} does not exist")
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise ConfigError(
            f"queue {name!r}: unknown option {sorted(unknown)[0]!r} (valid: {', '.join(sorted(_CHANGEABLE))})"
        )
    merged = info.config.as_dict()
    merged.update(changes)
    if changes.get("rate_limit", merged["rate_limit"]) is None and "rate_period" not in changes:
        merged["rate_period"] = None  # clearing the rate clears its period
    return QueueConfig.parse(name, merged)


def _config(name: str, value: Any) -> QueueConfig:
    if isinstance(value, QueueConfig):
        return QueueConfig.parse(name, value)
    return QueueConfig.parse(name, dict(value))


# -- sync ------------------------------------------------------------------------------------------


def list_queues(target: Any, *, schema: str = "public") -> list[QueueInfo]:
    """Every queue declared in ``schema``, by name."""
    conn = sync_connection(target)
    return [QueueInfo.from_row(row) for row in conn.execute(queries_for(schema).queues_list).fetchall()]


def get_queue(target: Any, name: str, *, schema: str = "public") -> QueueInfo | None:
    """The queue ``name``, or None."""
    conn = sync_connection(target)
    row = conn.execute(queries_for(schema).queue_get, {"name": name}).fetchone()
    return QueueInfo.from_row(row) if row else None


def add_queue(target: Any, name: str, *, schema: str = "public", **options: Any) -> QueueInfo:
    """Declare queue ``name`` (``limit=10, global_limit=…, rate_limit=…, rate_period=…,
    partitioned=…, paused=…``); a ConfigError when it exists or an option is bad."""
    config = _config(name, options)
    queries = queries_for(schema)
    conn = sync_connection(target)
    with conn.transaction():
        if conn.execute(queries.queue_add, _params(name, config)).fetchone() is None:
            raise ConfigError(f"queue {name!r} exists already (update it instead)")
        conn.execute(queries.signal_send, _signal(schema, name))
    return QueueInfo(name, config)


def update_queue(target: Any, name: str, *, schema: str = "public", **changes: Any) -> QueueInfo:
    """Change some of queue ``name``'s settings (``None`` clears an optional limit)."""
    queries = queries_for(schema)
    conn = sync_connection(target)
    with conn.transaction():
        row = conn.execute(queries.queue_get, {"name": name}).fetchone()
        config = _merge(QueueInfo.from_row(row) if row else None, name, changes)
        conn.execute(queries.queue_update, _params(name, config))
        conn.execute(queries.signal_send, _signal(schema, name))
    return QueueInfo(name, config)


def delete_queue(target: Any, name: str, *, schema: str = "public") -> None:
    """Forget queue ``name`` (its jobs stay); QueueNotFoundError when there is none."""
    queries = queries_for(schema)
    conn = sync_connection(target)
    with conn.transaction():
        if conn.execute(queries.queue_delete, {"name": name}).fetchone() is None:
            raise QueueNotFoundError(f"queue {name!r} does not exist")
        conn.execute(queries.signal_send, _signal(schema, name))


# -- async -----------------------------------------------------------------------------------------


async def alist_queues(target: Any, *, schema: str = "public") -> list[QueueInfo]:
    """The async twin of :func:`list_queues`."""
    conn = await async_connection(target)
    cursor = await conn.execute(queries_for(schema).queues_list)
    return [QueueInfo.from_row(row) for row in await cursor.fetchall()]


async def aget_queue(target: Any, name: str, *, schema: str = "public") -> QueueInfo | None:
    """The async twin of :func:`get_queue`."""
    conn = await async_connection(target)
    row = await (await conn.execute(queries_for(schema).queue_get, {"name": name})).fetchone()
    return QueueInfo.from_row(row) if row else None


async def aadd_queue(target: Any, name: str, *, schema: str = "public", **options: Any) -> QueueInfo:
    """The async twin of :func:`add_queue`."""
    config = _config(name, options)
    queries = queries_for(schema)
    conn = await async_connection(target)
    async with conn.transaction():
        if await (await conn.execute(queries.queue_add, _params(name, config))).fetchone() is None:
            raise ConfigError(f"queue {name!r} exists already (update it instead)")
        await conn.execute(queries.signal_send, _signal(schema, name))
    return QueueInfo(name, config)


async def aupdate_queue(target: Any, name: str, *, schema: str = "public", **changes: Any) -> QueueInfo:
    """The async twin of :func:`update_queue`."""
    queries = queries_for(schema)
    conn = await async_connection(target)
    async with conn.transaction():
        row = await (await conn.execute(queries.queue_get, {"name": name})).fetchone()
        config = _merge(QueueInfo.from_row(row) if row else None, name, changes)
        await conn.execute(queries.queue_update, _params(name, config))
        await conn.execute(queries.signal_send, _signal(schema, name))
    return QueueInfo(name, config)


async def adelete_queue(target: Any, name: str, *, schema: str = "public") -> None:
    """The async twin of :func:`delete_queue`."""
    queries = queries_for(schema)
    conn = await async_connection(target)
    async with conn.transaction():
        if await (await conn.execute(queries.queue_delete, {"name": name})).fetchone() is None:
            raise QueueNotFoundError(f"queue {name!r} does not exist")
        await conn.execute(queries.signal_send, _signal(schema, name))


async def aresolve_queues(
    target: Any, configs: dict[str, QueueConfig | None], *, schema: str = "public", everything: bool = False
) -> dict[str, QueueConfig]:
    """The queues a node starting with ``configs`` runs: a row of the table wins over the code's
    config; a queue given without one (``None``) must have a row; with ``everything`` every
    declared queue runs too."""
    declared = {info.name: info.config for info in await alist_queues(target, schema=schema)}
    resolved: dict[str, QueueConfig] = {}
    for name, config in configs.items():
        row = declared.get(name)
        if row is None and config is None:
            raise ConfigError(
                f"queue {name!r} is not declared in the database "
                f"(declare it: python -m pgqueue queues add {name} --limit N)"
            )
        chosen = row if row is not None else config
        assert chosen is not None
        resolved[name] = chosen
    if everything:
        for name, config in declared.items():
            resolved.setdefault(name, config)
    return resolved
