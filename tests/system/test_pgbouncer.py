"""Everything through a real PgBouncer in transaction mode: insert, fetch, ack, cron, leader,
rescue, queue control and Chimeway's worker; LISTEN on a direct connection.

PgBouncer (Debian's package) is started by :mod:`tests.pgbouncer` from a temporary config in front
of the tests' PostgreSQL. PgBouncer 1.18 (Debian 12) keeps no prepared statements across server
sessions, so these tests also show that nothing of pgqueue's depends on a server session.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

import pgqueue
from chaos.database import Probe
from chimeway.models import Delivery
from chimeway.notifier import Notifier, Recipient
from chimeway.trigger import trigger
from pgqueue import pooler
from pgqueue.plugins import PluginContext
from pgqueue.plugins.cron import Cron, CronEntry
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime
from tests.helpers import await_until, wait_until
from tests.pgbouncer import PgBouncer, pgbouncer
from tests.system.test_processes import (
    REPOSITORY,
    Launch,
    assert_clean_exit,
    assert_each_ran_once,
    launch,
    prepare,
    probe,
    wait_all_completed,
)
from tests.system.workers import DSN_VARIABLE, EXECUTIONS_DDL, SCHEMA_VARIABLE, Record, Sleep

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.anyio]

__all__ = ["launch", "probe"]  # fixtures this module uses from test_processes

JOBS = 3_000


@pytest.fixture(scope="module")
def bouncer(dsn: str) -> Iterator[PgBouncer]:
    with pgbouncer(dsn, mode="transaction") as running:
        yield running


def test_a_pooler_is_recognised_and_its_mode_told(dsn: str, bouncer: PgBouncer) -> None:
    with pgbouncer(dsn, mode="session") as session_mode:
        modes = anyio.run(_modes, dsn, bouncer.dsn, session_mode.dsn)
    assert modes == (pooler.PoolMode.DIRECT, pooler.PoolMode.TRANSACTION, pooler.PoolMode.SESSION)
    with psycopg.connect(dsn) as direct, psycopg.connect(bouncer.dsn) as pooled:
        assert (pooler.configure(direct), direct.prepare_threshold) == (False, 5)
        assert (pooler.configure(pooled), pooled.prepare_threshold) == (True, None)
        assert pooled.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def _modes(*conninfos: str) -> tuple[pooler.PoolMode, ...]:
    return tuple([await pooler.apool_mode(conninfo) for conninfo in conninfos])


def test_a_busy_transaction_pool_is_not_mistaken_for_a_session_pooler(bouncer: PgBouncer) -> None:
    # Given clients keeping the pool's server sessions busy with short transactions
    stop = threading.Event()

    def churn() -> None:
        with psycopg.connect(bouncer.dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT pg_backend_pid()")

    churners = [threading.Thread(target=churn) for _ in range(6)]
    for thread in churners:
        thread.start()
    try:
        # When a node tells the pooler's mode, again and again
        modes = anyio.run(_modes, *[bouncer.dsn] * 15)
    finally:
        stop.set()
        for thread in churners:
            thread.join()

    # Then it is never called a session pooler
    assert set(modes) == {pooler.PoolMode.TRANSACTION}


def test_without_configure_prepared_statements_break_and_with_it_they_dont(bouncer: PgBouncer) -> None:
    def run_twenty_times(configured: bool) -> None:
        with psycopg.connect(bouncer.dsn) as a, psycopg.connect(bouncer.dsn) as b:
            for conn in (a, b):
                if configured:
                    pooler.configure(conn)
            for i in range(20):
                for conn in (a, b):
                    with conn.transaction():
                        conn.execute("SELECT %s::int + 1", (i,)).fetchone()

    # psycopg prepares a statement run five times; the next transaction may run elsewhere
    with pytest.raises(psycopg.errors.DatabaseError, match="prepared statement"):
        run_twenty_times(configured=False)
    run_twenty_times(configured=True)


def test_nodes_behind_pgbouncer_run_every_job_once_and_rescue_a_killed_one(
    dsn: str, schema: str, bouncer: PgBouncer, probe: Probe, launch: Launch
) -> None:
    # Given jobs inserted through PgBouncer (COPY in bulk, and single inserts in a transaction that
    # rolls back, which leaves nothing)
    prepare(bouncer.dsn, schema, [Record.new({}) for _ in range(JOBS)])
    with psycopg.connect(bouncer.dsn) as conn, conn.transaction(force_rollback=True):
        pgqueue.insert(conn, Record.new({}), schema=schema)
    assert probe.states() == {"available": JOBS}

    # When two nodes drain them through PgBouncer, listening directly, and one is killed mid-way
    nodes = [
        launch(bouncer.dsn, schema, name, direct_dsn=dsn, rescue_window=2.0) for name in ("node-a", "node-b")
    ]
    leader = wait_until(probe.leader, timeout=20, message="no leader elected through PgBouncer")
    survivor = next(node for node in nodes if node.name == leader)
    victim = next(node for node in nodes if node.name != leader)
    wait_until(lambda: probe.executions() >= 300, timeout=30, message="the nodes never got going")
    victim.kill()

    # Then every job completes, none twice except what the victim had in flight
    wait_all_completed(probe, JOBS)
    executions = probe.executions_by_job()
    assert len(executions) == JOBS
    twice = {job: runs for job, runs in executions.items() if len(runs) > 1}
    assert all(runs[0][1] == victim.name for runs in twice.values()), twice
    assert probe.states() == {"completed": JOBS}

    # And a job inserted now is picked up at once: the survivor heard it (LISTEN is direct)
    late = Sleep.new({"seconds": 0})
    with psycopg.connect(bouncer.dsn) as conn:
        job_id = pgqueue.insert(conn, late, schema=schema).id
    wait_until(
        lambda: probe.value("SELECT state FROM {s}.jobs WHERE id = %s", (job_id,)) == "completed",
        timeout=5,
    )
    assert "pooler" not in survivor.output(), survivor.output()
    assert "prepared statement" not in survivor.output()
    assert_clean_exit(survivor)


def test_a_node_with_only_the_pooler_warns_and_still_runs_by_polling(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    # A PgBouncer of its own. The LISTEN this node sends through it stays registered on a server
    # connection that then receives notifications no client reads ("got packet 'A' from server
    # when not linked"); kept apart, that connection can't reach the other tests' nodes.
    with pgbouncer(dsn, mode="transaction") as bouncer:
        _polling_node_runs_every_job(schema, bouncer, probe, launch)


def _polling_node_runs_every_job(schema: str, bouncer: PgBouncer, probe: Probe, launch: Launch) -> None:
    node = launch(bouncer.dsn, schema, "polling-node")
    wait_until(lambda: "transaction mode" in node.output(), timeout=20, message=node.output())
    assert "direct-dsn" in node.output()
    prepare(bouncer.dsn, schema, [Record.new({}) for _ in range(200)])
    try:
        wait_all_completed(probe, 200)
    except AssertionError:
        print(node.output())
        print(bouncer.output()[-6000:])
        # what the node saw: the jobs' queues and times, and the producers it registered
        print(probe.rows("SELECT queue, state, scheduled_at, now() FROM {s}.jobs LIMIT 3"))
        print(probe.rows("SELECT * FROM {s}.pgqueue_producers"))
        # and what the server's sessions were doing: a snapshot or a lock held somewhere
        print(
            probe.rows(
                "SELECT pid, state, xact_start, backend_xmin, left(query, 120) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        print(probe.rows("SELECT pid, mode, granted FROM pg_locks WHERE relation = '{s}.jobs'::regclass"))
        raise
    assert_each_ran_once(probe, 200)
    node.stop(10)


def test_a_session_pooler_is_warned_about_at_startup(
    dsn: str, schema: str, probe: Probe, launch: Launch
) -> None:
    with pgbouncer(dsn, mode="session") as session_mode:
        node = launch(session_mode.dsn, schema, "session-node", direct_dsn=dsn)
        wait_until(lambda: "session mode" in node.output(), timeout=20, message=node.output())
        node.stop(10)


async def test_cron_leadership_and_queue_control_work_through_pgbouncer(
    dsn: str,
    schema: str,
    bouncer: PgBouncer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv(DSN_VARIABLE, dsn)
    monkeypatch.setenv(SCHEMA_VARIABLE, schema)
    with psycopg.connect(dsn) as conn:
        conn.execute(EXECUTIONS_DDL.format(psycopg.sql.Identifier(schema)))
    runtime = Runtime(
        bouncer.dsn,
        direct_conninfo=dsn,
        queues={"default": 5},
        workers=["tests.system.workers"],
        schema=schema,
        plugins=[Stager(), Lifeline()],
        leader_interval=0.2,
        shutdown_grace_period=1,
    )
    with Probe(dsn, schema) as reader:
        async with runtime:
            assert runtime.pool_mode is pooler.PoolMode.TRANSACTION
            # The leader is elected through PgBouncer; a cron round inserts through it
            await await_until(runtime.is_leader, timeout=10)
            context = PluginContext(
                runtime.pool, dsn, schema, runtime.node, runtime.notifier, runtime.is_leader, lambda q: None
            )
            cron = Cron([CronEntry("@reboot", Record)])
            assert await cron.run_once(context) == {"inserted": 1, "conflicts": 0}
            await await_until(lambda: reader.count("completed") == 1, timeout=10)
            # A paused queue (a signal row written through PgBouncer) fetches nothing until resumed
            await runtime.pause_queue("default")
            await await_until(lambda: (runtime.check_queue("default") or {}).get("paused"), timeout=5)
            async with await psycopg.AsyncConnection.connect(bouncer.dsn) as conn:
                await pgqueue.ainsert(conn, Record.new({}), schema=schema)
            assert reader.count("available") == 1
            await runtime.resume_queue("default")
            await await_until(lambda: reader.count("completed") == 2, timeout=10)
    assert reader.executions() == 2
    assert not [r for r in caplog.records if "pooler" in r.getMessage()]


class _Announcement(Notifier):
    notification_key = "announcement"

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(f"user:{n}") for n in range(params["count"])]

    def channels(self, params: Mapping[str, Any], who: Recipient) -> list[str]:
        return ["in_app"]

    def build(self, params: Mapping[str, Any], who: Recipient) -> dict[str, Any]:
        return {"subject": "hello"}


def test_chimeway_plans_and_delivers_through_pgbouncer(
    dsn: str, schema: str, bouncer: PgBouncer, tmp_path: Path
) -> None:
    # Given 500 deliveries planned through PgBouncer, in the application's transaction
    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(bouncer.dsn)
        pooler.configure(conn)
        return conn

    engine = create_engine("postgresql+psycopg://", creator=connect).execution_options(
        schema_translate_map={None: schema}
    )
    with Session(engine) as session:
        result = trigger(
            session, _Announcement(), {"count": 500}, idempotency_key="pgbouncer-500", queue_schema=schema
        )
        session.commit()
    assert len(result.delivery_ids) == 500

    # When the worker runs through PgBouncer (LISTEN direct)
    config = tmp_path / "chimeway.toml"
    config.write_text(f'schema = "{schema}"\nshutdown_grace = 2\n')
    env = {**os.environ, "DATABASE_URL": bouncer.dsn, "DIRECT_DATABASE_URL": dsn}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    worker = subprocess.Popen(
        [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def delivered() -> int:
            with Session(engine) as session:
                return int(session.scalar(select(func.count()).where(Delivery.status == "succeeded")) or 0)

        wait_until(lambda: delivered() == 500, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    # Then every delivery succeeded once, and the worker exited cleanly and quietly
    assert worker.returncode == 0, output
    assert "Traceback" not in output, output
    assert "prepared statement" not in output, output
    engine.dispose()
