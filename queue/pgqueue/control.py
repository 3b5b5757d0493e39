"""Queue control across nodes: pause, resume, scale, start and stop queues; stop cancelled jobs.

A command is a row of the ``pgqueue_signals`` table, which only the queue's own role can write. The
notification sent with it on the schema's ``signal`` topic carries nothing but the row's id, and a
node treats every notification there as a wake-up, whatever it says: it reads the rows it has not
applied yet and applies those. Anyone who can connect can send notifications; nobody who can't
write the table can steer a node.

Replays: a node applies rows in id order and remembers the highest id it applied, so an old id
sent again changes nothing, and a booting node starts after the newest row there is (older rows
were meant for the nodes running then). Ids are taken in insert order but may commit out of it;
an id seen skipped is looked for again for :data:`MISSING_WINDOW` seconds. The leader forgets
rows older than :data:`KEEP_SIGNALS` seconds.

``pkill`` (stop a running job) never decides anything itself: the node asks the database which of
the listed jobs running here are cancelled and stops only those; their own late acks are then
refused by the fence. When LISTEN does not work, nodes poll the table instead; the node that sends
a command applies it at once either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from .errors import ConfigError
from .lifecycle import SYSTEM_CLOCK, Clock, Wakeup
from .notifier import Notifier
from .producer import QueueConfig
from .store import channel_name, queries_for

if TYPE_CHECKING:
    from .producer import Producer

__all__ = [
    "ACTIONS",
    "KEEP_SIGNALS",
    "MISSING_WINDOW",
    "SIGNAL_TOPIC",
    "Control",
    "QueueHost",
    "Signal",
    "send_signal",
]

_log = logging.getLogger("pgqueue.control")
SIGNAL_TOPIC = "signal"
ACTIONS = frozenset({"pause", "resume", "scale", "start", "stop", "pkill"})
#: seconds an id seen skipped is still looked for (its transaction may commit late)
MISSING_WINDOW = 60.0
#: at most this many skipped ids are tracked at once
_MAX_MISSING = 1000
#: seconds a signal is kept; a node cut off for longer misses it
KEEP_SIGNALS = 3600.0
_READ_LIMIT = 500
#: while notifications arrive, the table is still read this often, for any missed in a reconnect
_RECHECK_INTERVAL = 30.0
_PRUNE_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Signal:
    """One command: a row of the signals table (``id`` 0 for one applied locally, never stored)."""

    id: int
    action: str
    queue: str | None = None
    node: str | None = None
    params: Mapping[str, Any] | None = None

    def param(self, name: str, default: Any = None) -> Any:
        return default if self.params is None else self.params.get(name, default)


class QueueHost(Protocol):
    """What queue control needs from the runtime it steers."""

    @property
    def node(self) -> str: ...

    def running_queues(self) -> Mapping[str, Producer]:
        """The producers running here, by queue."""
        ...

    def start_queue_here(self, queue: str, config: QueueConfig) -> None:
        """Start a producer for ``queue`` unless one runs here already."""
        ...

    def stop_queue_here(self, queue: str) -> None:
        """Stop ``queue``'s producer gracefully (in the background)."""
        ...


async def send_signal(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    action: str,
    *,
    queue: str | None = None,
    node: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> int:
    """Write one signal row in ``conn``'s transaction and wake every node (at commit). Its id.

    This is the one way to steer nodes from outside a runtime (the dashboard uses it): the row is
    the command, so only a role that may write the signals table can send one.
    """
    if action not in ACTIONS:
        raise ConfigError(f"signal action must be one of {sorted(ACTIONS)}, got {action!r}")
    values = {
        "action": action,
        "queue": queue,
        "node": node,
        "params": orjson.dumps(dict(params or {})).decode(),
        "channel": channel_name(schema, SIGNAL_TOPIC),
    }
    row = await (await conn.execute(queries_for(schema).signal_send, values)).fetchone()
    return int(row[0]) if row else 0


class Control:
    """Sends, reads and applies queue-control signals for one runtime. A lifecycle Service."""

    name = "control"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        host: QueueHost,
        notifier: Notifier,
        *,
        is_leader: Callable[[], bool],
        poll_interval: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.queries = queries_for(schema)
        self.host = host
        self.notifier = notifier
        self.is_leader = is_leader
        self.poll_interval = poll_interval
        self.clock = clock
        #: the highest signal id applied (or skipped as not for this node)
        self.last = 0
        self._missing: dict[int, float] = {}
        self._reading = anyio.Lock()
        self._wakeup = Wakeup(clock)
        self._next_prune = 0.0
        self.applied = 0

    # -- the service -------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Start after the newest signal there is; call once before the runtime starts its queues."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(self.queries.signals_latest)).fetchone()
        self.last = int(row[0]) if row else 0

    def wake(self) -> None:
        """A notification arrived on the signal topic (or may have been missed): read the table.

        What the notification said does not matter; anyone may send one."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            listening = self.notifier.status == "listening"
            await self._wakeup.wait(_RECHECK_INTERVAL if listening else self.poll_interval)
            await self.catch_up()
            if self.is_leader() and self.clock.monotonic() >= self._next_prune:
                async with self.pool.connection() as conn:
                    await conn.execute(self.queries.signals_prune, {"older_than": KEEP_SIGNALS})
                self._next_prune = self.clock.monotonic() + _PRUNE_INTERVAL

    async def catch_up(self) -> None:
        """Read and apply every signal not applied yet, in id order."""
        async with self._reading:
            while True:
                now = self.clock.monotonic()
                self._missing = {i: until for i, until in self._missing.items() if until > now}
                params = {"after": self.last, "missing": list(self._missing), "limit": _READ_LIMIT}
                async with self.pool.connection() as conn:
                    rows = await (await conn.execute(self.queries.signals_read, params)).fetchall()
                for row in rows:
                    signal = self._take(row, now)
                    if signal is not None and signal.node in (None, self.host.node):
                        await self._apply_quietly(signal)
                if len(rows) < _READ_LIMIT:
                    return

    def _take(self, row: tuple[Any, ...], now: float) -> Signal | None:
        """Bookkeeping for one row read: the signal if it is new to this node, else None."""
        signal_id = int(row[0])
        if signal_id > self.last:
            for skipped in range(max(self.last + 1, signal_id - _MAX_MISSING), signal_id):
                if len(self._missing) >= _MAX_MISSING:
                    break
                self._missing[skipped] = now + MISSING_WINDOW
            self.last = signal_id
        elif self._missing.pop(signal_id, None) is None:
            return None  # applied already
        _, action, queue, node, params = row
        return Signal(signal_id, action, queue, node, params if isinstance(params, dict) else None)

    async def _apply_quietly(self, signal: Signal) -> None:
        try:
            await self.apply(signal)
        except (ConfigError, ValueError, TypeError) as exc:
            _log.warning("pgqueue: ignored queue signal %d (%s)", signal.id, exc)
        else:
            self.applied += 1

    # -- sending -----------------------------------------------------------------------------------

    async def request(
        self, action: str, queue: str, params: Mapping[str, Any], *, node: str | None, local_only: bool
    ) -> None:
        """Send a command to every node (or ``node``), or with ``local_only`` apply it here only."""
        if local_only:
            if action != "start" and queue not in (*self.host.running_queues(), "*"):
                raise ConfigError(f"queue {queue!r} does not exist locally")
            await self.apply(Signal(0, action, queue, None, params))
            return
        await self.send(action, queue=queue, node=node, params=params)

    async def send(
        self,
        action: str,
        *,
        queue: str | None = None,
        node: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> int:
        """Write a signal and wake every node; it takes effect here before this returns. Its id."""
        async with self.pool.connection() as conn:
            signal_id = await send_signal(conn, self.schema, action, queue=queue, node=node, params=params)
        # Applied here now, whether or not this node can hear notifications.
        await self.catch_up()
        return signal_id

    # -- applying ----------------------------------------------------------------------------------

    async def apply(self, signal: Signal) -> None:
        """Carry out ``signal`` on this node; a malformed one raises :class:`ConfigError`."""
        if signal.action == "pkill":
            await self._stop_cancelled(signal.param("job_ids"))
            return
        queue = signal.queue
        if not isinstance(queue, str):
            raise ConfigError(f"signal {signal.action!r} needs a queue")
        queues = self.host.running_queues()
        targets = list(queues.values()) if queue == "*" else [p for q, p in queues.items() if q == queue]
        if signal.action == "pause":
            for producer in targets:
                producer.pause()
        elif signal.action == "resume":
            for producer in targets:
                producer.resume()
        elif signal.action == "scale":
            for producer in targets:
                if signal.param("limit") is not None:
                    producer.scale(signal.param("limit"))
                if signal.param("paused") is True:
                    producer.pause()
                elif signal.param("paused") is False:
                    producer.resume()
        elif signal.action == "start":
            if queue not in queues:
                config = QueueConfig.parse(
                    queue, {"limit": signal.param("limit"), "paused": signal.param("paused", False)}
                )
                self.host.start_queue_here(queue, config)
        elif signal.action == "stop":
            if queue in queues:
                self.host.stop_queue_here(queue)
        else:
            raise ConfigError(f"unknown signal action {signal.action!r}")

    async def _stop_cancelled(self, job_ids: Any) -> None:
        if not isinstance(job_ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in job_ids
        ):
            raise ConfigError(f"pkill needs a list of job ids, got {job_ids!r}")
        here = {
            job_id: producer
            for producer in self.host.running_queues().values()
            for job_id in job_ids
            if job_id in producer.running
        }
        if not here:
            return
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(self.queries.jobs_cancelled, {"ids": list(here)})).fetchall()
        for (job_id,) in rows:
            here[int(job_id)].cancel_job(int(job_id))
