"""The runtime in-process: fetching on notification, queue control, cancel, graceful shutdown."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest

import pgqueue
from pgqueue import telemetry
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.pruner import Pruner
from pgqueue.plugins.reindexer import Reindexer
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime

from ..helpers import await_until

pytestmark = pytest.mark.anyio

STARTED: dict[int, anyio.Event] = {}
_lock = threading.Lock()


class Noop(pgqueue.Worker, queue="rt"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


class Hold(pgqueue.Worker, queue="rt"):
    """Sleeps args.seconds (async, so cancellable)."""

    async def perform(self, job: pgqueue.Job) -> None:
        await anyio.sleep(job.args["seconds"])


class SyncNoop(pgqueue.Worker, queue="rt"):
    def perform(self, job: pgqueue.Job) -> str:
        return threading.current_thread().name


def jobs_in(conn: psycopg.Connection[Any], schema: str, state: str) -> list[pgqueue.Job]:
    conn.rollback()
    return pgqueue.all_jobs(conn, pgqueue.JobFilter(state=state), schema=schema)


@pytest.fixture
def make_runtime(dsn: str, schema: str) -> Any:
    def make(**options: Any) -> Runtime:
        defaults: dict[str, Any] = {
            "schema": schema,
            "queues": {"rt": 5},
            "poll_interval": 30.0,  # long: pickup must come from notifications
            "heartbeat_interval": 0.2,
            "plugins": [],
            "shutdown_grace_period": 2.0,
        }
        return Runtime(dsn, **{**defaults, **options})

    return make


async def test_jobs_inserted_before_and_after_start_complete(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    pgqueue.insert_all(conn, [Noop.new({"i": i}) for i in range(50)], schema=schema)
    conn.commit()
    async with make_runtime() as runtime:
        await await_until(lambda: len(jobs_in(conn, schema, "completed")) == 50)
        # Inserted while idle: the insert notification wakes the producer (the poll is 30 s).
        pgqueue.insert_all(
            conn, [Noop.new({"late": i}) for i in range(10)] + [SyncNoop.new({})], schema=schema
        )
        conn.commit()
        await await_until(lambda: len(jobs_in(conn, schema, "completed")) == 61, timeout=5)
        await runtime.wait_idle()
    assert jobs_in(conn, schema, "executing") == []


async def test_cancelling_an_executing_job_stops_it(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(conn, Hold.new({"seconds": 30}), schema=schema)
    conn.commit()
    async with make_runtime() as runtime:
        await await_until(lambda: runtime.check_queue("rt")["running"] == [job.id])  # type: ignore[index]
        assert await runtime.cancel_job(job.id)
        await await_until(lambda: runtime.check_queue("rt")["running"] == [], timeout=3)  # type: ignore[index]
        await runtime.wait_idle()
    final = pgqueue.get_job(conn, job.id, schema=schema)
    assert final is not None
    assert final.state == "cancelled"
    assert final.cancelled_at is not None
    assert len(final.errors) == 1


async def test_check_queue_reports_limit_pause_running_and_node(make_runtime: Any) -> None:
    async with make_runtime(queues={"rt": 1, "media": {"limit": 2, "paused": True}}, node="web.1") as runtime:
        rt = runtime.check_queue("rt")
        media = runtime.check_queue("media")
        assert rt is not None
        assert media is not None
        assert (rt["limit"], rt["paused"], rt["running"], rt["node"]) == (1, False, [], "web.1")
        assert (media["limit"], media["paused"]) == (2, True)
        assert runtime.check_queue("nope") is None
        assert [q["queue"] for q in runtime.check_all_queues()] == ["media", "rt"]


async def test_pause_and_resume_across_nodes_and_locally(make_runtime: Any) -> None:
    async with make_runtime(node="web.1") as one, make_runtime(node="web.2") as two:
        await one.pause_queue("rt")
        await await_until(lambda: one.check_queue("rt")["paused"] and two.check_queue("rt")["paused"])  # type: ignore[index]
        await one.resume_queue("rt", local_only=True)
        assert not one.check_queue("rt")["paused"]  # type: ignore[index]
        assert two.check_queue("rt")["paused"]  # type: ignore[index]
        await one.resume_queue("rt", node="web.2")
        await await_until(lambda: not two.check_queue("rt")["paused"])  # type: ignore[index]
        await two.pause_queue("*")
        await await_until(lambda: one.check_queue("rt")["paused"])  # type: ignore[index]


async def test_local_only_control_of_a_queue_that_does_not_run_here_raises(make_runtime: Any) -> None:
    async with make_runtime() as runtime:
        with pytest.raises(pgqueue.ConfigError, match="queue 'alpha' does not exist locally"):
            await runtime.pause_queue("alpha", local_only=True)
        await runtime.pause_queue("alpha")  # across nodes: fine even if nobody runs it


async def test_scale_start_and_stop_queues(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    async with make_runtime() as runtime:
        await runtime.scale_queue("rt", 7)
        await await_until(lambda: runtime.check_queue("rt")["limit"] == 7)  # type: ignore[index]
        await runtime.scale_queue("rt", 3, paused=True)
        await await_until(
            lambda: runtime.check_queue("rt") == {**runtime.check_queue("rt"), "limit": 3, "paused": True}
        )  # type: ignore[arg-type]
        await runtime.start_queue("gamma", 5)
        await await_until(lambda: runtime.check_queue("gamma") is not None)
        job = pgqueue.insert(conn, Noop.new({}, queue="gamma"), schema=schema)
        conn.commit()
        await await_until(lambda: pgqueue.get_job(conn, job.id, schema=schema).state == "completed")  # type: ignore[union-attr]
        await runtime.stop_queue("gamma")
        await await_until(lambda: runtime.check_queue("gamma") is None)


async def test_graceful_shutdown_lets_short_jobs_finish_and_leaves_long_ones(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    short = pgqueue.insert(conn, Hold.new({"seconds": 0.05}), schema=schema)
    long = pgqueue.insert(conn, Hold.new({"seconds": 30}), schema=schema)
    conn.commit()
    orphaned: list[Any] = []
    telemetry.attach(
        "test-shutdown", lambda e, m, meta: orphaned.append(meta["orphaned"]), [("queue", "shutdown")]
    )
    try:
        async with make_runtime(shutdown_grace_period=0.3) as runtime:
            await await_until(lambda: len(runtime.check_queue("rt")["running"]) == 2)  # type: ignore[index]
    finally:
        telemetry.detach("test-shutdown")
    assert pgqueue.get_job(conn, short.id, schema=schema).state == "completed"  # type: ignore[union-attr]
    assert pgqueue.get_job(conn, long.id, schema=schema).state == "executing"  # type: ignore[union-attr]
    assert orphaned == [[long.id]]
    producers = conn.execute(f'SELECT count(*) FROM "{schema}".pgqueue_producers').fetchone()
    assert producers == (0,), "the producer said goodbye, so the lifeline may rescue at once"


async def test_nothing_new_starts_after_shutdown_begins(
    make_runtime: Any, conn: psycopg.Connection[Any], schema: str
) -> None:
    pgqueue.insert(conn, Hold.new({"seconds": 0.3}), schema=schema)
    conn.commit()
    async with make_runtime(queues={"rt": 1}) as runtime:
        await await_until(lambda: len(runtime.check_queue("rt")["running"]) == 1)  # type: ignore[index]
        pgqueue.insert(conn, Noop.new({}), schema=schema)
        conn.commit()
        runtime.check_queue("rt")  # the queue is full; the Noop waits
    assert len(jobs_in(conn, schema, "available")) == 1


async def test_malformed_signals_are_ignored(make_runtime: Any, dsn: str, schema: str) -> None:
    from pgqueue.store import channel_name

    async with make_runtime() as runtime:
        with psycopg.connect(dsn, autocommit=True) as other:
            for payload in (
                '{"action": "scale", "queue": "rt", "limit": "lots"}',
                '{"action": "explode", "queue": "rt"}',
                "[1]",
            ):
                other.execute("SELECT pg_notify(%s, %s)", (channel_name(schema, "signal"), payload))
        await runtime.scale_queue("rt", 2)
        await await_until(lambda: runtime.check_queue("rt")["limit"] == 2)  # type: ignore[index]


async def test_the_schema_must_be_migrated(dsn: str, empty_schema: str) -> None:
    with pytest.raises(pgqueue.NotMigratedError, match="python -m pgqueue migrate"):
        async with Runtime(dsn, schema=empty_schema, queues={"rt": 1}):
            pass


@pytest.fixture
async def runtime_async(make_runtime: Any) -> AsyncIterator[Runtime]:
    async with make_runtime() as runtime:
        yield runtime


# -- timing options are range-checked -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval must be more than 0 seconds, got 0"),
        ({"heartbeat_interval": 1e-9}, "heartbeat_interval must be at least 0.01 s, got 1e-09"),
        (
            {"plugins": [Lifeline(rescue_window=1e-9)]},
            "the lifeline's rescue_window must be at least 0.03 s (3 heartbeats of at least 0.01 s)",
        ),
        ({"heartbeat_interval": -1}, "heartbeat_interval must not be negative"),
        ({"heartbeat_interval": 1e300}, "heartbeat_interval must be a finite number of seconds up to 1e+10"),
        (
            {"heartbeat_interval": 30, "plugins": [Lifeline(rescue_window=5)]},
            "heartbeat_interval must be at most the lifeline's rescue_window / 3 (1.66667 s), got 30",
        ),
        ({"poll_interval": 0}, "poll_interval must be more than 0 seconds, got 0"),
        ({"poll_interval": float("nan")}, "poll_interval must be a finite number"),
        ({"shutdown_grace_period": float("inf")}, "shutdown_grace_period must be a finite number"),
        ({"shutdown_flush_timeout": 0}, "shutdown_flush_timeout must be more than 0 seconds"),
        ({"leader_interval": 0}, "leader_interval must be more than 0 seconds"),
        ({"node": ""}, "node must be a non-empty string"),
        ({"node": "a\x00b"}, "node must be a non-empty string"),
    ],
)
def test_timing_options_out_of_range_are_refused(dsn: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        Runtime(dsn, queues={"rt": 1}, **options)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (lambda: Lifeline(rescue_window=1e300), "lifeline rescue_window must be at most 1e+10 seconds"),
        (lambda: Lifeline(rescue_after=1e11), "lifeline rescue_after must be at most 1e+10 seconds"),
        (lambda: Pruner(max_age=1e300), "pruner max_age must be at most 1e+10 seconds"),
        (lambda: Stager(interval=0), "stager interval must be more than 0 seconds"),
        (lambda: Stager(limit=0), "stager limit must be a positive integer"),
        (lambda: Reindexer(timeout=0), "reindexer timeout must be more than 0 seconds"),
        (lambda: Reindexer(timeout=1e9), "reindexer timeout must be at most 2147483 seconds"),
    ],
)
def test_plugin_durations_are_bounded(plugin: Any, message: str) -> None:
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        plugin()


@pytest.mark.parametrize(("window", "heartbeat"), [(15.0, 2.0), (5.0, 5.0 / 3), (3.0, 1.0), (None, 2.0)])
def test_the_default_heartbeat_beats_three_times_per_rescue_window(
    dsn: str, window: float | None, heartbeat: float
) -> None:
    plugins = [Lifeline(rescue_window=window)] if window is not None else []
    assert Runtime(dsn, queues={"rt": 1}, plugins=plugins).heartbeat_interval == pytest.approx(heartbeat)


def test_a_malformed_dsn_is_refused_without_quoting_it() -> None:
    with pytest.raises(pgqueue.ConfigError, match="the DSN is malformed") as caught:
        Runtime("postgresql://app:S3cret PW@localhost/db", queues={"rt": 1})
    assert "S3cret" not in str(caught.value)
