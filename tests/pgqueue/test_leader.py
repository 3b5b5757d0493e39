"""Leadership by lease (Oban behaviour 46): one leader among peers, renewals, foreign leases, hand-over."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from pgqueue.errors import ConfigError
from pgqueue.leader import LEADER_TOPIC, Leader
from pgqueue.lifecycle import Service
from pgqueue.notifier import LocalNotifier, Payload, PostgresNotifier
from tests.helpers import await_until

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@pytest.fixture
def app_name() -> str:
    """An application_name that picks out this test's pooled connections in pg_stat_activity."""
    return f"pgqueue-leader-test-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def open_pool(dsn: str, app_name: str, size: int) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool whose connections already exist, so no election pays for connecting."""
    pool = AsyncConnectionPool(
        dsn, min_size=size, max_size=size, open=False, kwargs={"application_name": app_name}
    )
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def pool(dsn: str, app_name: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with open_pool(dsn, app_name, size=4) as opened:
        yield opened


async def lease(aconn: psycopg.AsyncConnection[Any], schema: str) -> tuple[str, Any, Any] | None:
    """The lease row as (node, elected_at, expires_at), read outside any leader."""
    cursor = await aconn.execute(
        sql.SQL("SELECT node, elected_at, expires_at FROM {} WHERE name = 'pgqueue'").format(
            sql.Identifier(schema, "pgqueue_leaders")
        )
    )
    row = await cursor.fetchone()
    await aconn.commit()
    return None if row is None else (row[0], row[1], row[2])


async def plant_lease(aconn: psycopg.AsyncConnection[Any], schema: str, node: str, expires_in: str) -> None:
    """A lease held by another node, expiring ``expires_in`` from now (negative: already expired)."""
    await aconn.execute(
        sql.SQL(
            "INSERT INTO {} (name, node, elected_at, expires_at) "
            "VALUES ('pgqueue', %s, now() - interval '1 hour', now() + %s::interval)"
        ).format(sql.Identifier(schema, "pgqueue_leaders")),
        (node, expires_in),
    )
    await aconn.commit()


class Peer:
    """One node's Leader running in its own cancel scope, so a test can stop that node alone."""

    def __init__(self, leader: Leader, *services: Service) -> None:
        self.leader = leader
        self.services = services
        self.scope = anyio.CancelScope()
        self.changes: list[bool] = []
        leader.on_change(self.changes.append)

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                for service in self.services:
                    tg.start_soon(service.run)
                tg.start_soon(self.leader.run)


def leaders(peers: list[Peer]) -> list[str]:
    return [peer.leader.node for peer in peers if peer.leader.is_leader]


async def test_leader_satisfies_the_service_protocol(pool: AsyncConnectionPool[Any], schema: str) -> None:
    assert isinstance(Leader(pool, schema, "web.1"), Service)


async def test_among_three_peers_exactly_one_leads(
    pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    notifier = LocalNotifier()
    peers = [Peer(Leader(pool, schema, f"web.{n}", interval=2.0, notifier=notifier)) for n in (1, 2, 3)]

    async with anyio.create_task_group() as tg:
        for peer in peers:
            tg.start_soon(peer.run)
        await await_until(lambda: len(leaders(peers)) == 1, timeout=TIMEOUT)
        (winner,) = leaders(peers)
        first = await lease(aconn, schema)
        assert first is not None
        assert first[0] == winner

        # Through a round of renewals, still the same single leader.
        async def renewed() -> bool:
            row = await lease(aconn, schema)
            return row is not None and row[2] > first[2]

        await await_until(renewed, timeout=TIMEOUT)
        assert leaders(peers) == [winner]
        assert await peers[0].leader.current_leader() == winner
        tg.cancel_scope.cancel()

    for peer in peers:
        assert peer.changes == ([True, False] if peer.leader.node == winner else [])


async def test_a_leader_stays_leader_after_reelection(
    pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    peer = Peer(Leader(pool, schema, "web.1", interval=2.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.run)
        await await_until(lambda: peer.leader.is_leader, timeout=TIMEOUT)
        first = await lease(aconn, schema)
        assert first is not None

        async def renewed() -> bool:
            row = await lease(aconn, schema)
            return row is not None and row[2] > first[2]

        await await_until(renewed, timeout=TIMEOUT)
        again = await lease(aconn, schema)
        assert again is not None
        assert again[0] == "web.1"
        assert again[1] == first[1]  # renewed, not re-elected: elected_at stays
        assert peer.leader.is_leader
        tg.cancel_scope.cancel()

    assert peer.changes == [True, False]
    assert await lease(aconn, schema) is None  # stopping gave the lease up


async def test_an_unexpired_foreign_lease_makes_a_peer_concede(
    pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await plant_lease(aconn, schema, "web.B", "1 hour")
    leader = Leader(pool, schema, "web.A")

    assert await leader.elect() is False
    assert leader.is_leader is False
    assert await leader.current_leader() == "web.B"
    row = await lease(aconn, schema)
    assert row is not None
    assert row[0] == "web.B"


async def test_an_expired_foreign_lease_is_taken_over(
    pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await plant_lease(aconn, schema, "web.B", "-1 second")
    leader = Leader(pool, schema, "web.A", interval=30.0)
    assert await leader.current_leader() is None  # an expired lease leads nobody

    assert await leader.elect() is True
    assert leader.is_leader is True
    assert await leader.current_leader() == "web.A"
    row = await lease(aconn, schema)
    assert row is not None
    node, elected_at, expires_at = row
    assert node == "web.A"
    # The new lease runs interval seconds on the database clock.
    assert 29.0 < (expires_at - elected_at).total_seconds() <= 30.0


async def test_when_the_leader_stops_another_peer_leads_within_moments(
    dsn: str, pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    # A 30 s interval: only the leader's "down" notification can explain a quick hand-over.
    peers = []
    for n in (1, 2, 3):
        notifier = PostgresNotifier(dsn, schema, pool=pool, ping_timeout=TIMEOUT)
        peers.append(Peer(Leader(pool, schema, f"web.{n}", interval=30.0, notifier=notifier), notifier))
    downs: list[Payload] = []

    async with anyio.create_task_group() as tg:
        for peer in peers:
            tg.start_soon(peer.run)
        for peer in peers:
            for service in peer.services:
                assert isinstance(service, PostgresNotifier)
                assert await service.wait_ready(TIMEOUT) == "listening"
                service.subscribe(LEADER_TOPIC, downs.append)
        await await_until(lambda: len(leaders(peers)) == 1, timeout=TIMEOUT)
        (old,) = [peer for peer in peers if peer.leader.is_leader]

        stopped_at = time.monotonic()
        old.scope.cancel()
        await await_until(lambda: len(leaders(peers)) == 1 and not old.leader.is_leader, timeout=2.0)
        handover = time.monotonic() - stopped_at
        (new,) = [peer for peer in peers if peer.leader.is_leader]
        assert await new.leader.current_leader() == new.leader.node
        tg.cancel_scope.cancel()

    assert handover < 2.0
    assert old.changes == [True, False]
    assert {"down": old.leader.node, "name": "pgqueue"} in downs


async def test_a_failed_election_concedes_and_a_later_one_wins_back(
    dsn: str, schema: str, aconn: psycopg.AsyncConnection[Any], app_name: str
) -> None:
    # One pooled connection, so killing it fails exactly the next election.
    async with open_pool(dsn, app_name, size=1) as pool:
        peer = Peer(Leader(pool, schema, "web.1", interval=2.0))
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            await await_until(lambda: peer.leader.is_leader, timeout=TIMEOUT)

            await aconn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (app_name,),
            )
            await aconn.commit()
            await await_until(lambda: peer.changes[-1:] == [False], timeout=TIMEOUT)
            # The pool replaces the dead connection; the lease still names this node, so it wins it back.
            await await_until(lambda: peer.leader.is_leader, timeout=TIMEOUT)
            tg.cancel_scope.cancel()

    assert peer.changes == [True, False, True, False]


async def test_is_leader_turns_false_when_the_lease_may_have_run_out_unrenewed(
    pool: AsyncConnectionPool[Any], schema: str
) -> None:
    class Clock:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

        async def sleep(self, seconds: float) -> None:
            await anyio.sleep(seconds)

        def random(self) -> float:
            return 0.0

    clock = Clock()
    leader = Leader(pool, schema, "web.1", interval=10.0, clock=clock)

    assert await leader.elect() is True
    clock.now += 9.9
    assert leader.is_leader is True
    clock.now += 0.2
    assert leader.is_leader is False


async def test_resign_gives_up_only_this_nodes_lease(
    pool: AsyncConnectionPool[Any], schema: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    notifier = LocalNotifier()
    downs: list[Payload] = []
    notifier.subscribe(LEADER_TOPIC, downs.append)
    follower = Leader(pool, schema, "web.2", notifier=notifier)
    await plant_lease(aconn, schema, "web.1", "1 hour")

    assert await follower.elect() is False
    await follower.resign()

    assert await follower.current_leader() == "web.1"
    assert downs == []


async def test_leader_rejects_settings_that_make_no_sense(
    pool: AsyncConnectionPool[Any], schema: str
) -> None:
    with pytest.raises(ConfigError, match="node must be a non-empty string"):
        Leader(pool, schema, "")
    with pytest.raises(ConfigError, match="interval must be > 0 seconds, got 0"):
        Leader(pool, schema, "web.1", interval=0)
    with pytest.raises(ConfigError, match="jitter must be a fraction"):
        Leader(pool, schema, "web.1", jitter=1.5)
