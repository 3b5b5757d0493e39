"""Batches: callbacks inserted exactly once by the ack that makes their condition true, and progress."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.plugins.pruner import Pruner
from pgqueue.runtime import Runtime
from pgqueue.testing import drain_queue

from ..helpers import await_until

pytestmark = pytest.mark.anyio


class Member(pgqueue.Worker, queue="members", max_attempts=1):
    def perform(self, job: pgqueue.Job) -> Any:
        if job.args.get("fail"):
            raise RuntimeError("member failed")
        return job.args.get("n")


class OnCompleted(pgqueue.Worker, queue="callbacks"):
    def perform(self, job: pgqueue.Job) -> None:
        return None


class OnDiscarded(pgqueue.Worker, queue="callbacks"):
    def perform(self, job: pgqueue.Job) -> None:
        return None


class OnFinished(pgqueue.Worker, queue="callbacks"):
    def perform(self, job: pgqueue.Job) -> None:
        return None


CALLBACKS = {
    "on_completed": OnCompleted.new({"kind": "completed"}, tags=["cb"]),
    "on_discarded": OnDiscarded.new({"kind": "discarded"}),
    "on_finished": OnFinished.new({"kind": "finished"}, priority=3),
}


def callbacks(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, Any, Any, list[str], int]]:
    conn.rollback()
    return [
        tuple(row)  # type: ignore[misc]
        for row in conn.execute(
            sql.SQL(
                "SELECT worker, args, meta -> 'batch', tags, priority FROM {}"
                " WHERE queue = 'callbacks' ORDER BY id"
            ).format(sql.Identifier(schema, "jobs"))
        ).fetchall()
    ]


def test_a_batch_that_all_completes_fires_completed_and_finished_once(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    batch = pgqueue.insert_batch(conn, [Member.new({"n": i}) for i in range(5)], schema=schema, **CALLBACKS)
    conn.commit()
    assert [j.id for j in batch.jobs] == sorted(j.id for j in batch.jobs)
    progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
    assert (progress.total, progress.completed, progress.pending, progress.finished) == (5, 0, 5, False)

    drain_queue(dsn, "members", schema=schema, with_limit=3)
    progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
    assert (progress.completed, progress.pending, progress.finished) == (3, 2, False)
    assert callbacks(conn, schema) == []

    drain_queue(dsn, "members", schema=schema)
    progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
    assert (progress.total, progress.completed, progress.discarded, progress.finished) == (5, 5, 0, True)
    event = {"id": batch.id}
    assert callbacks(conn, schema) == [
        (
            "tests.pgqueue.test_batches.OnCompleted",
            {"kind": "completed"},
            {**event, "event": "completed"},
            ["cb"],
            0,
        ),
        (
            "tests.pgqueue.test_batches.OnFinished",
            {"kind": "finished"},
            {**event, "event": "finished"},
            [],
            3,
        ),
    ]
    # The callbacks are ordinary jobs: they run, and running them changes nothing in the batch.
    assert drain_queue(dsn, "callbacks", schema=schema).success == 2
    assert len(callbacks(conn, schema)) == 2


def test_a_discarded_member_fires_discarded_once_and_finished_when_all_are_done(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    jobs = [
        Member.new({"fail": True}),
        Member.new({"n": 1}),
        Member.new({"fail": True}),
        Member.new({"n": 2}),
    ]
    batch = pgqueue.insert_batch(conn, jobs, schema=schema, **CALLBACKS)
    conn.commit()
    drain_queue(dsn, "members", schema=schema, with_limit=1)
    assert [c[0].rsplit(".", 1)[1] for c in callbacks(conn, schema)] == ["OnDiscarded"]
    drain_queue(dsn, "members", schema=schema)
    assert [c[0].rsplit(".", 1)[1] for c in callbacks(conn, schema)] == ["OnDiscarded", "OnFinished"]
    progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
    assert (progress.completed, progress.discarded, progress.cancelled, progress.finished) == (2, 2, 0, True)


def test_members_added_later_count_and_a_finished_batch_takes_no_more(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    batch = pgqueue.insert_batch(conn, [Member.new({"n": 0})], schema=schema, on_finished=OnFinished.new({}))
    conn.commit()
    added = pgqueue.add_to_batch(conn, batch.id, [Member.new({"n": 1}), Member.new({"n": 2})], schema=schema)
    conn.commit()
    assert len(added) == 2
    assert pgqueue.batch_progress(conn, batch.id, schema=schema).total == 3
    drain_queue(dsn, "members", schema=schema)
    assert len(callbacks(conn, schema)) == 1
    with pytest.raises(pgqueue.BatchClosedError, match=f"batch {batch.id} has finished"):
        pgqueue.add_to_batch(conn, batch.id, [Member.new({"n": 3})], schema=schema)
    conn.rollback()
    with pytest.raises(pgqueue.BatchNotFoundError, match="batch 999999 does not exist"):
        pgqueue.batch_progress(conn, 999999, schema=schema)
    conn.rollback()
    # nothing of the refused addition was written
    assert pgqueue.all_jobs(conn, pgqueue.JobFilter(args={"n": 3}), schema=schema) == []


def test_cancelling_members_that_have_not_run_counts_them(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    batch = pgqueue.insert_batch(conn, [Member.new({"n": i}) for i in range(3)], schema=schema, **CALLBACKS)
    conn.commit()
    drain_queue(dsn, "members", schema=schema, with_limit=1)
    assert pgqueue.cancel_all_jobs(conn, pgqueue.JobFilter(queue="members"), schema=schema) == 2
    conn.commit()
    progress = pgqueue.batch_progress(conn, batch.id, schema=schema)
    assert (progress.completed, progress.cancelled, progress.finished) == (1, 2, True)
    assert [c[2]["event"] for c in callbacks(conn, schema)] == ["finished"]


async def test_async_twins_insert_add_and_report_progress(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        batch = await pgqueue.ainsert_batch(aconn, [Member.new({"n": 1})], schema=schema, meta={"owner": "x"})
        await pgqueue.aadd_to_batch(aconn, batch.id, [Member.new({"n": 2})], schema=schema)
        await aconn.commit()
        progress = await pgqueue.abatch_progress(aconn, batch.id, schema=schema)
    assert (progress.total, progress.meta, progress.pending) == (2, {"owner": "x"}, 2)


def test_a_rolled_back_batch_leaves_nothing(dsn: str, schema: str, conn: psycopg.Connection[Any]) -> None:
    batch = pgqueue.insert_batch(conn, [Member.new({"n": 1})], schema=schema)
    conn.rollback()
    with pytest.raises(pgqueue.BatchNotFoundError):
        pgqueue.batch_progress(conn, batch.id, schema=schema)
    conn.rollback()
    assert pgqueue.all_jobs(conn, schema=schema) == []


def test_bad_input_is_refused_with_the_field_named_and_nothing_written(
    schema: str, conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(pgqueue.ConfigError, match="at least one job"):
        pgqueue.insert_batch(conn, [], schema=schema)
    with pytest.raises(pgqueue.ConfigError, match="on_completed must be an unsaved job"):
        pgqueue.insert_batch(conn, [Member.new({})], schema=schema, on_completed="Notify")  # type: ignore[arg-type]
    with pytest.raises(pgqueue.ConfigError, match="on_finished can't be scheduled"):
        pgqueue.insert_batch(
            conn, [Member.new({})], schema=schema, on_finished=OnFinished.new({}, schedule_in=5)
        )
    with pytest.raises(pgqueue.ConfigError, match=r"jobs\[1\] must be an unsaved job"):
        pgqueue.insert_batch(conn, [Member.new({}), {"n": 1}], schema=schema)  # type: ignore[list-item]
    with pytest.raises(pgqueue.ConfigError, match="batch_id must be a positive integer"):
        pgqueue.add_to_batch(conn, 0, [Member.new({})], schema=schema)
    conn.rollback()
    assert pgqueue.all_jobs(conn, schema=schema) == []


def finished_an_hour_ago(dsn: str, schema: str) -> tuple[pgqueue.Batch, pgqueue.Batch]:
    """A batch whose one member completed (with a result) an hour ago, and a batch still open."""
    with psycopg.connect(dsn) as conn:
        done = pgqueue.insert_batch(conn, [Member.new({"n": 7})], schema=schema)
        conn.commit()
        drain_queue(conn, "members", schema=schema)
        open_batch = pgqueue.insert_batch(conn, [Member.new({"n": 8})], schema=schema)
        conn.execute(
            sql.SQL("UPDATE {} SET finished_at = now() - interval '1 hour' WHERE id = %s").format(
                sql.Identifier(schema, "pgqueue_batches")
            ),
            [done.id],
        )
        conn.execute(
            sql.SQL(
                "UPDATE {} SET completed_at = now() - interval '1 hour' WHERE state = 'completed'"
            ).format(sql.Identifier(schema, "jobs"))
        )
        conn.commit()
    return done, open_batch


async def test_the_pruner_deletes_finished_batches_with_their_jobs_and_results(dsn: str, schema: str) -> None:
    done, open_batch = await anyio.to_thread.run_sync(finished_an_hour_ago, dsn, schema)
    assert await pgqueue.await_job(dsn, done.jobs[0], 5, schema=schema) == 7

    async def pruned() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            try:
                await pgqueue.abatch_progress(aconn, done.id, schema=schema)
            except pgqueue.BatchNotFoundError:
                return True
        return False

    async with Runtime(dsn, schema=schema, queues={}, plugins=[Pruner(max_age=60, interval=0.05)]):
        await await_until(pruned)
    with pytest.raises(pgqueue.JobNotFoundError):
        await pgqueue.await_job(dsn, done.jobs[0], 5, schema=schema)
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        assert (await pgqueue.abatch_progress(aconn, open_batch.id, schema=schema)).total == 1


def test_a_callback_wakes_its_queue_and_members_ack_through_the_batched_statement(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    from pgqueue.executor import Ack, ack_statement
    from pgqueue.job import JobState
    from pgqueue.store import channel_name, queries_for

    batch = pgqueue.insert_batch(conn, [Member.new({"n": 1})], schema=schema, on_finished=OnFinished.new({}))
    conn.commit()
    (member,) = pgqueue.all_jobs(conn, schema=schema)
    assert member.meta == {"batch_id": batch.id}
    queries = queries_for(schema)
    assert ack_statement(queries, "fetch_jobs", [Ack(1, 1, JobState.COMPLETED)]) == queries.fetch_jobs
    batched = ack_statement(queries, "fetch_jobs", [Ack(1, 1, JobState.COMPLETED, batched=True)])
    assert batched == queries.fetch_jobs_batched
    assert "batch_counts" in batched
    assert "batch_counts" not in queries.fetch_jobs
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema, "insert"))))
        drain_queue(dsn, "members", schema=schema)
        notes = [n.payload for n in listener.notifies(timeout=1.0)]
    assert '{"queue" : "callbacks"}' in notes
    assert pgqueue.batch_progress(conn, batch.id, schema=schema).finished


async def test_a_member_the_lifeline_discards_counts_and_fires_the_discarded_callback(
    dsn: str, schema: str
) -> None:
    from pgqueue.plugins.lifeline import Lifeline

    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        batch = await pgqueue.ainsert_batch(
            aconn, [Member.new({"n": 1})], schema=schema, on_discarded=OnDiscarded.new({})
        )
        # Its node died while running its last attempt: no producer row is left for it.
        await aconn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'executing', attempt = 1, attempted_at = now(),"
                " attempted_by = ARRAY['gone', gen_random_uuid()::text]"
            ).format(sql.Identifier(schema, "jobs"))
        )
        await aconn.commit()

        async def finished() -> bool:
            return (await pgqueue.abatch_progress(aconn, batch.id, schema=schema)).finished

        async with Runtime(dsn, schema=schema, queues={}, plugins=[Lifeline(interval=0.05)]):
            await await_until(finished)
        progress = await pgqueue.abatch_progress(aconn, batch.id, schema=schema)
        await aconn.commit()
    assert (progress.discarded, progress.completed) == (1, 0)
    with psycopg.connect(dsn) as conn:
        assert [c[2] for c in callbacks(conn, schema)] == [{"id": batch.id, "event": "discarded"}]
