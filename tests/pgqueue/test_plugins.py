"""Plugins, one round at a time: stager, pruner, lifeline, cron, reindexer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import pgqueue
from pgqueue.notifier import LocalNotifier
from pgqueue.plugins import PluginContext
from pgqueue.plugins.cron import Cron, CronEntry
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.pruner import Pruner
from pgqueue.plugins.reindexer import Reindexer
from pgqueue.plugins.stager import Stager

from .workers import Ok

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ctx(dsn: str, schema: str) -> Any:
    woken: list[str] = []
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        context = PluginContext(pool, dsn, schema, "node-a", LocalNotifier(), lambda: True, woken.append)
        context.woken = woken  # type: ignore[attr-defined]
        yield context


def update(conn: psycopg.Connection[Any], schema: str, job_id: int, assignments: str, *params: Any) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET " + assignments + " WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        (*params, job_id),
    )
    conn.commit()


def state(conn: psycopg.Connection[Any], schema: str, job: pgqueue.Job) -> str:
    conn.rollback()
    found = pgqueue.get_job(conn, job.id, schema=schema)
    return found.state if found else "deleted"


async def test_stager_makes_due_jobs_available_and_wakes_their_queues(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    past = pgqueue.insert(conn, Ok.new({}, schedule_in=-10), schema=schema)
    future = pgqueue.insert(conn, Ok.new({}, schedule_in=10), schema=schema)
    retry = pgqueue.insert(conn, Ok.new({}, queue="other"), schema=schema)
    update(conn, schema, retry.id, "state = 'retryable', attempt = 1, scheduled_at = now()")

    meta = await Stager().run_once(ctx)

    assert meta["staged_count"] == 2
    assert (state(conn, schema, past), state(conn, schema, future), state(conn, schema, retry)) == (
        "available",
        "scheduled",
        "available",
    )
    assert sorted(ctx.woken) == ["alpha", "other"]


async def test_pruner_deletes_finished_jobs_older_than_max_age(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    jobs = {}
    for name, (st, column, age) in {
        "old_completed": ("completed", "completed_at", 61),
        "new_completed": ("completed", "completed_at", 59),
        "old_cancelled": ("cancelled", "cancelled_at", 61),
        "old_discarded": ("discarded", "discarded_at", 61),
        "new_discarded": ("discarded", "discarded_at", 59),
    }.items():
        job = pgqueue.insert(conn, Ok.new({"name": name}), schema=schema)
        update(conn, schema, job.id, f"state = '{st}', {column} = now() - make_interval(secs => %s)", age)
        jobs[name] = job
    waiting = pgqueue.insert(conn, Ok.new({}), schema=schema)
    conn.commit()

    meta = await Pruner(max_age=timedelta(minutes=1)).run_once(ctx)

    assert meta["pruned_count"] == 3
    left = {name for name, job in jobs.items() if state(conn, schema, job) != "deleted"}
    assert left == {"new_completed", "new_discarded"}
    assert state(conn, schema, waiting) == "available"


async def test_pruner_catches_up_while_its_batches_come_back_full(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    for _ in range(3):
        job = pgqueue.insert(conn, Ok.new({}), schema=schema)
        update(conn, schema, job.id, "state = 'completed', completed_at = now() - interval '2 minutes'")
    conn.commit()
    pruner = Pruner(max_age=60, interval=30, limit=2, catch_up_interval=0.5)
    assert pruner.next_delay(ctx.clock) == 30

    assert (await pruner.run_once(ctx))["pruned_count"] == 2
    assert pruner.next_delay(ctx.clock) == 0.5, "a full batch: more are waiting"
    assert (await pruner.run_once(ctx))["pruned_count"] == 1
    assert pruner.next_delay(ctx.clock) == 30, "caught up: back to the interval"


def _signals(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    conn.rollback()
    table = sql.Identifier(schema, "pgqueue_workflow_signals")
    return [row[0] for row in conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name").format(table))]


def _send(conn: psycopg.Connection[Any], schema: str, name: str, ago: float) -> None:
    pgqueue.signal(conn, name, {"n": 1}, schema=schema)
    conn.execute(
        sql.SQL("UPDATE {} SET sent_at = now() - make_interval(secs => %s) WHERE name = %s").format(
            sql.Identifier(schema, "pgqueue_workflow_signals")
        ),
        (ago, name),
    )
    conn.commit()


def _waiter(conn: psycopg.Connection[Any], schema: str, name: str) -> pgqueue.Job:
    flow = pgqueue.Workflow()
    flow.add("wait", Ok.new({}), wait_for_signal=name)
    job = pgqueue.insert_workflow(conn, flow, schema=schema)["wait"]
    conn.commit()
    return job


async def test_pruner_deletes_received_signals_after_max_age_and_any_after_signal_max_age(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    _waiter(conn, schema, "received_old")
    _waiter(conn, schema, "received_new")
    _send(conn, schema, "received_old", 61)
    _send(conn, schema, "received_new", 30)
    _send(conn, schema, "unreceived_old", 8 * 86400)
    _send(conn, schema, "unreceived_new", 6 * 86400)
    # a signal sent before anything waits for it, then received by a step inserted later
    _send(conn, schema, "received_at_insert", 61)
    assert _waiter(conn, schema, "received_at_insert").state == "available"

    meta = await Pruner(max_age=60, signal_max_age=timedelta(days=7)).run_once(ctx)

    assert meta["pruned_signals"] == 3
    assert _signals(conn, schema) == ["received_new", "unreceived_new"]


async def test_a_step_that_starts_waiting_after_its_signal_was_pruned_waits_for_the_next(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    _send(conn, schema, "gone", 3600)
    await Pruner(max_age=60, signal_max_age=1800).run_once(ctx)
    assert _signals(conn, schema) == []

    late = _waiter(conn, schema, "gone")
    assert (late.state, late.scheduled_at.year) == ("scheduled", 9999)
    assert pgqueue.signal(conn, "gone", schema=schema) == 1
    conn.commit()
    assert state(conn, schema, late) == "available"


async def test_pruner_deletes_signals_in_bounded_batches_and_catches_up(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    for n in range(3):
        _send(conn, schema, f"old-{n}", 3600 + n)
    pruner = Pruner(max_age=60, signal_max_age=1800, limit=2, interval=30, catch_up_interval=0.5)

    assert (await pruner.run_once(ctx))["pruned_signals"] == 2
    assert _signals(conn, schema) == ["old-0"], "the oldest go first"
    assert pruner.next_delay(ctx.clock) == 0.5
    assert (await pruner.run_once(ctx))["pruned_signals"] == 1
    assert pruner.next_delay(ctx.clock) == 30
    assert _signals(conn, schema) == []


def test_pruner_rejects_non_positive_settings() -> None:
    for bad in ({"max_age": 0}, {"signal_max_age": 0}, {"interval": 0}, {"limit": 0}):
        with pytest.raises(pgqueue.ConfigError, match="pruner"):
            Pruner(**bad)


async def insert_executing(
    conn: psycopg.Connection[Any],
    schema: str,
    producer: str,
    *,
    attempted_ago: float,
    attempt: int = 1,
    max_attempts: int = 20,
) -> pgqueue.Job:
    job = pgqueue.insert(conn, Ok.new({}, max_attempts=max_attempts), schema=schema)
    update(
        conn,
        schema,
        job.id,
        "state = 'executing', attempt = %s, attempted_at = now() - make_interval(secs => %s), "
        "attempted_by = ARRAY['node-x', %s]",
        attempt,
        attempted_ago,
        producer,
    )
    return job


def heartbeat(conn: psycopg.Connection[Any], schema: str, producer: str, ago: float) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (uuid, node, queue, updated_at) "
            "VALUES (%s, 'node-x', 'alpha', now() - make_interval(secs => %s))"
        ).format(sql.Identifier(schema, "pgqueue_producers")),
        (producer, ago),
    )
    conn.commit()


async def test_lifeline_rescues_jobs_of_silent_producers_only(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    alive, silent, gone = (str(uuid.uuid4()) for _ in range(3))
    heartbeat(conn, schema, alive, ago=1)
    heartbeat(conn, schema, silent, ago=30)
    long_but_alive = await insert_executing(conn, schema, alive, attempted_ago=3000)
    orphan = await insert_executing(conn, schema, silent, attempted_ago=5)
    orphan_of_gone = await insert_executing(conn, schema, gone, attempted_ago=1)
    exhausted = await insert_executing(conn, schema, silent, attempted_ago=5, attempt=20, max_attempts=20)

    meta = await Lifeline(rescue_window=15).run_once(ctx)

    assert sorted(meta["rescued_jobs"]) == sorted([orphan.id, orphan_of_gone.id])
    assert meta["discarded_jobs"] == [exhausted.id]
    assert state(conn, schema, long_but_alive) == "executing", "a long job on a live node is never rescued"
    rescued = pgqueue.get_job(conn, orphan.id, schema=schema)
    assert rescued is not None
    assert (rescued.state, rescued.attempt, rescued.meta["rescued"]) == ("available", 1, 1)
    gave_up = pgqueue.get_job(conn, exhausted.id, schema=schema)
    assert gave_up is not None
    assert gave_up.discarded_at is not None
    assert "no attempts left" in gave_up.errors[-1]["error"]
    assert ctx.woken == ["alpha"]


async def test_lifeline_backstop_rescues_implausibly_long_jobs(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    alive = str(uuid.uuid4())
    heartbeat(conn, schema, alive, ago=0)
    stuck = await insert_executing(conn, schema, alive, attempted_ago=7)
    fresh = await insert_executing(conn, schema, alive, attempted_ago=3)

    meta = await Lifeline(rescue_window=15, rescue_after=5).run_once(ctx)

    assert meta["rescued_jobs"] == [stuck.id]
    assert state(conn, schema, fresh) == "executing"


async def test_lifeline_rounds_on_many_nodes_at_once_rescue_each_orphan_once(
    dsn: str, conn: psycopg.Connection[Any], schema: str
) -> None:
    # Given 2,000 orphans of a producer that went silent
    silent = str(uuid.uuid4())
    heartbeat(conn, schema, silent, ago=60)
    jobs = pgqueue.insert_all(conn, [Ok.new({}) for _ in range(2_000)], schema=schema)
    conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'executing', attempt = 1, attempted_at = now(), "
            "attempted_by = ARRAY['node-x', %s]"
        ).format(sql.Identifier(schema, "jobs")),
        (silent,),
    )
    conn.commit()

    # When six nodes, none of them the leader, run lifeline rounds at the same time, in small bites
    async def node(name: str, pool: AsyncConnectionPool[Any], found: list[int]) -> None:
        context = PluginContext(pool, dsn, schema, name, LocalNotifier(), lambda: False, lambda q: None)
        lifeline = Lifeline(rescue_window=15, limit=150)
        assert not lifeline.leader_only
        while True:
            meta = await lifeline.run_once(context)
            if not meta["rescued_jobs"]:
                return
            found.extend(meta["rescued_jobs"])

    rescued: list[list[int]] = [[] for _ in range(6)]
    async with AsyncConnectionPool(dsn, min_size=6, max_size=6, open=False) as pool:
        async with anyio.create_task_group() as tg:
            for number, found in enumerate(rescued):
                tg.start_soon(node, f"node-{number}", pool, found)

    # Then every orphan was rescued by exactly one of them, once
    everything = [job_id for found in rescued for job_id in found]
    assert sorted(everything) == sorted(job.id for job in jobs)
    assert sum(1 for found in rescued if found) > 1, "the rounds ran side by side"
    counts = conn.execute(
        sql.SQL("SELECT meta ->> 'rescued', count(*) FROM {} GROUP BY 1").format(
            sql.Identifier(schema, "jobs")
        )
    ).fetchall()
    assert counts == [("1", 2_000)]


class Tick(pgqueue.Worker, queue="cron"):
    def perform(self, job: pgqueue.Job) -> None:
        pass


def test_cron_inserts_due_entries_in_their_time_zones() -> None:
    cron = Cron(
        [
            CronEntry("* * * * *", Tick, {"ref": 1}),
            CronEntry("59 23 31 12 0", Tick, {"ref": 2}),
            CronEntry("* * * * *", Tick, {"ref": 3}),
            CronEntry("0 9 * * *", Tick, {"ref": 4}, timezone="Europe/Paris"),
        ]
    )
    at = datetime(2024, 6, 3, 7, 0, 30, tzinfo=UTC)  # 09:00 in Paris (summer time)
    due = cron.due(at, reboot=False)
    assert [job.args["ref"] for job in due] == [1, 3, 4]
    meta = due[2].meta
    assert (meta["cron"], meta["cron_expr"], meta["cron_tz"]) == (True, "0 9 * * *", "Europe/Paris")
    assert meta["cron_at"] == "2024-06-03T07:00:00+00:00"
    assert len({job.meta["cron_name"] for job in due}) == 3


async def test_each_scheduled_minute_is_inserted_at_most_once(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    first_leader = Cron([CronEntry("* * * * *", Tick, {"ref": 1})])
    second_leader = Cron([CronEntry("* * * * *", Tick, {"ref": 1})])

    a = await first_leader.run_once(ctx)
    b = await second_leader.run_once(ctx)  # a new leader, the same minute (unless the minute just turned)

    conn.rollback()
    cron_jobs = pgqueue.all_jobs(conn, pgqueue.JobFilter(worker=Tick.name), schema=schema)
    minutes = {job.meta["cron_at"] for job in cron_jobs}
    assert len(cron_jobs) == len(minutes), "never two jobs for one entry and minute"
    assert a["inserted"] == 1
    assert b["inserted"] + b["conflicts"] == 1


async def test_reboot_entries_run_once_per_leader_boot(
    ctx: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    cron = Cron([CronEntry("@reboot", Tick, {"boot": True})])
    assert (await cron.run_once(ctx))["inserted"] == 1
    assert (await cron.run_once(ctx))["inserted"] == 0


def test_cron_entries_are_validated_up_front() -> None:
    with pytest.raises(pgqueue.ConfigError):
        CronEntry("60 * * * *", Tick)
    with pytest.raises(pgqueue.ConfigError):
        CronEntry("* * * * *", Tick, timezone="Mars/Olympus")
    with pytest.raises(pgqueue.ConfigError, match="can't be used with cron"):
        CronEntry("* * * * *", Tick, options={"unique": True})
    with pytest.raises(TypeError, match="args"):
        CronEntry("* * * * *", Tick, {"when": datetime.now(UTC)})
    with pytest.raises(pgqueue.ConfigError, match="distinct"):
        Cron([CronEntry("* * * * *", Tick), CronEntry("* * * * *", Tick)])


def test_cron_waits_until_just_past_the_next_minute() -> None:
    delay = Cron([]).next_delay(None)  # type: ignore[arg-type]
    assert 0 < delay <= 60.01


async def test_reindexer_rebuilds_the_indexes(ctx: Any, conn: psycopg.Connection[Any], schema: str) -> None:
    meta = await Reindexer(indexes=("jobs_fetch_idx", "jobs_stage_idx"), timeout=30).run_once(ctx)
    assert meta["reindexed"] == ["jobs_fetch_idx", "jobs_stage_idx"]
    assert Reindexer(schedule="@daily", timezone="Asia/Tokyo").next_delay(None) <= 86_400.01  # type: ignore[arg-type]
