"""Leadership by lease: one node per schema runs the leader-only plugins (stager, pruner, lifeline, cron).

The lease is one row in ``pgqueue_leaders`` per lease ``name``: the node that holds an unexpired row
leads. Every node runs a :class:`Leader` as a service; each election, in one transaction, deletes
the lease if it has expired and then inserts it, or extends it when this node already holds it
(Oban's ``Peers.Database``). Expiry comes from the database clock, so nodes with skewed clocks
agree. A leader renews every ``interval / 2`` seconds, a follower tries every ``interval``; a
leader that stops deletes its row and announces it on the ``leader`` topic, so followers elect at
once instead of waiting for the lease to run out.

Leader-only work checks :attr:`Leader.is_leader` before each round, and may register
:meth:`Leader.on_change` to start or stop promptly when leadership moves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import psycopg

from .errors import ConfigError
from .lifecycle import SYSTEM_CLOCK, Backoff, Clock, Service, Wakeup, describe_error, jittered
from .notifier import Notifier, Payload, Unsubscribe
from .store import queries_for

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["LEADER_TOPIC", "Leader", "LeaderCallback"]

logger = logging.getLogger(__name__)

#: The notifier topic on which a stopping leader says ``{"down": node, "name": lease name}``.
LEADER_TOPIC = "leader"

LeaderCallback = Callable[[bool], None]

# What an election can fail with: the database (psycopg errors, including the pool's PoolTimeout),
# the network, or the election's own deadline.
_ELECTION_ERRORS = (psycopg.Error, OSError, TimeoutError)
# How long a stopping leader spends giving up its lease before leaving it to expire.
_RESIGN_TIMEOUT = 5.0


class Leader:
    """Takes part in the leader election for ``name`` in ``schema``, as ``node``, until cancelled.

    Run it as a service (``tg.start_soon(supervise, leader)``). It elects at once, then a leader
    renews every ``interval / 2`` seconds and a follower retries every ``interval`` (both shortened
    by up to ``jitter`` so peers drift apart); the lease lasts ``interval`` seconds. With a
    ``notifier``, followers elect as soon as the leader announces it stepped down. An election that
    fails (database unreachable, too slow) concedes: this node stops leading until an election
    succeeds again, which is retried with backoff.
    """

    name = "leader"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        node: str,
        *,
        name: str = "pgqueue",
        interval: float = 30.0,
        notifier: Notifier | None = None,
        jitter: float = 0.1,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(node, str) or not node:
            raise ConfigError(f"leader node must be a non-empty string, got {node!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"leader name must be a non-empty string, got {name!r}")
        if not interval > 0:
            raise ConfigError(f"leader interval must be > 0 seconds, got {interval!r}")
        if not 0 <= jitter < 1:
            raise ConfigError(f"leader jitter must be a fraction in [0, 1), got {jitter!r}")
        self.node = node
        self.lease_name = name
        self.interval = interval
        self._pool = pool
        self._queries = queries_for(schema)
        self._notifier = notifier
        self._jitter = jitter
        self._clock = clock
        self._params = {"name": name, "node": node, "interval": interval}
        # An election that takes longer than half a lease could end after the lease it renews has
        # run out; past this it counts as failed.
        self._election_timeout = interval / 2
        # Failed elections retry sooner than a follower's interval: after a blip the old leader's
        # lease still names this node, and winning it back quickly keeps leader-only work running.
        self._retry = Backoff(min(1.0, interval / 4), interval)
        self._wakeup = Wakeup(clock)
        self._leading = False
        # Set by a won election, cleared by resigning: even after a failed election conceded, the
        # database may still hold this node's lease, and a stopping node should release it.
        self._may_hold_lease = False
        self._lease_until = 0.0
        self._callbacks: list[LeaderCallback] = []
        #: how long resigning may take before the lease is left to expire (a stopping runtime
        #: shortens it to what remains of its shutdown deadline)
        self.resign_timeout = _RESIGN_TIMEOUT

    @property
    def is_leader(self) -> bool:
        """Whether this node leads now; False once its lease may have run out, even unrenewed."""
        return self._leading and self._clock.monotonic() < self._lease_until

    def on_change(self, callback: LeaderCallback) -> Unsubscribe:
        """Call ``callback(True)`` when this node gains leadership, ``callback(False)`` when it loses it."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def current_leader(self) -> str | None:
        """The node that holds the unexpired lease now, or None when nobody does."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(self._queries.leader_current, self._params)).fetchone()
        return None if row is None else str(row[0])

    async def elect(self) -> bool:
        """Run one election now and return whether this node leads; a failed election concedes."""
        try:
            return await self._elect()
        except _ELECTION_ERRORS as exc:
            self._concede(exc)
            return False

    async def run(self) -> None:
        """Elect until cancelled; when cancelled while leading, give up the lease and say so."""
        unsubscribe = self._notifier.subscribe(LEADER_TOPIC, self._heard) if self._notifier else None
        failures = 0
        try:
            while True:
                try:
                    leading = await self._elect()
                except _ELECTION_ERRORS as exc:
                    self._concede(exc)
                    failures += 1
                    delay = self._retry.delay(failures, self._clock.random())
                else:
                    failures = 0
                    base = self.interval / 2 if leading else self.interval
                    delay = jittered(base, self._jitter, self._clock.random())
                await self._wakeup.wait(delay)
        finally:
            if unsubscribe is not None:
                unsubscribe()
            # Stopping is usually a cancellation; without the shield, the first await here would
            # be cancelled too and the lease would linger until it expires.
            with anyio.CancelScope(shield=True):
                await self.resign()

    async def resign(self) -> None:
        """Stop leading: give up the lease and tell the followers (no-op unless this node won a lease).

        ``run()`` does this when cancelled; call it directly only when not running, since a running
        election loop would simply win the lease back.
        """
        # Concede locally first: leader-only work must stop before anyone else can take over.
        self._set_leading(False)
        if not self._may_hold_lease:
            return
        with anyio.move_on_after(self.resign_timeout):
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(self._queries.leader_resign, self._params)
                    gave_up = await cursor.fetchone() is not None
                self._may_hold_lease = False
                if gave_up and self._notifier is not None:
                    await self._notifier.notify(LEADER_TOPIC, {"down": self.node, "name": self.lease_name})
            except _ELECTION_ERRORS as exc:
                # The lease then simply expires; followers take over after at most one interval.
                logger.warning(
                    "pgqueue leader %s could not give up its lease (%s)", self.node, describe_error(exc)
                )

    async def _elect(self) -> bool:
        started = self._clock.monotonic()
        with anyio.fail_after(self._election_timeout):
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(self._queries.leader_delete_expired, self._params)
                cursor = await conn.execute(self._queries.leader_elect, self._params)
                won = await cursor.fetchone() is not None
                if won:
                    # Before the commit: a cancellation landing after it must still find the lease
                    # marked as possibly ours, or a stopping node would leave it to expire.
                    self._may_hold_lease = True
        if won:
            # Measured from before the election: the database's lease can't outlast this.
            self._lease_until = started + self.interval
        self._set_leading(won)
        return won

    def _concede(self, exc: BaseException) -> None:
        logger.warning(
            "pgqueue leader election for %s failed (%s); %s",
            self.node,
            describe_error(exc),
            "conceding leadership" if self._leading else "not leading",
        )
        self._set_leading(False)

    def _heard(self, payload: Payload) -> None:
        if payload.get("name", self.lease_name) == self.lease_name and payload.get("down") != self.node:
            self._wakeup.set()

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        logger.info(
            "pgqueue node %s %s leadership of %s", self.node, "took" if leading else "lost", self.lease_name
        )
        for callback in list(self._callbacks):
            try:
                callback(leading)
            except Exception:
                logger.exception("pgqueue leader callback %r failed", callback)


if TYPE_CHECKING:
    # Never runs: makes mypy prove that the leader is a service.
    _SERVICE: type[Service] = Leader
