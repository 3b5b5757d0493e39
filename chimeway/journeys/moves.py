"""Runs' moves made in batches: many runs per transaction, a few statements per batch.

:func:`advance_many` makes the moves of a batch of (run, step) requests in one transaction: one
statement locks the runs (in id order), each run's move is decided from its row
(:func:`chimeway.journeys.runs.walk`), one statement plans the deliveries of all the steps taken
(one more for each further step a move takes at once, after a suppressed one), one writes every
run's new row and appends every transition, and one inserts the jobs (dispatch jobs, and the step
jobs of waits). A batch commits whole or not at all, like a single move, so the guarantees of a
move hold for each run in it.

:class:`Mover` collects the requests handed in on one event loop, as the dispatch batcher
(:mod:`chimeway.dispatch.batcher`) collects deliveries: every job that asks for a move in the
same turn of the loop is in the same batch.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import psycopg

import pgqueue

from ..store import Queries
from .runs import Emit, Emitted, JobFactories, Move, Walk, walk

__all__ = ["Mover", "MoverHost", "advance_many"]


async def advance_many(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    requests: Sequence[tuple[uuid.UUID, int]],
    *,
    queue_schema: str,
    jobs: JobFactories,
) -> list[Any]:
    """The moves of ``requests`` (run, step), in one transaction of ``conn`` (in autocommit);
    returns each request's job result, in order. Requests of one run are made one after another."""
    results: list[Any] = [None] * len(requests)
    async with conn.transaction():
        ids = sorted({run_id for run_id, _ in requests})
        cursor = await conn.execute(queries.journey_lock_runs, {"ids": ids})
        moves: dict[uuid.UUID, Move] = {}
        for row in await cursor.fetchall():
            run_id = uuid.UUID(str(row[0]))
            moves[run_id] = Move(run_id, row[1:], jobs)
        pending = list(enumerate(requests))
        while pending:
            # one request per run at a time: a run's second request sees what its first did
            now: list[tuple[int, Walk]] = []
            later: list[tuple[int, tuple[uuid.UUID, int]]] = []
            taken: set[uuid.UUID] = set()
            for index, (run_id, step) in pending:
                if run_id in taken:
                    later.append((index, (run_id, step)))
                    continue
                taken.add(run_id)
                move = moves.get(run_id)
                if move is None:
                    results[index] = pgqueue.Cancel(f"journey run {run_id} not found")
                else:
                    now.append((index, walk(move, step)))
            await _drive(conn, queries, now, results)
            pending = later
        moved = [m for m in moves.values() if m.log]
        if moved:
            await conn.execute(queries.journey_moves, _moves_params(moved))
        new_jobs = [job for m in moved for job in m.new_jobs]
        if new_jobs:
            await pgqueue.ainsert_all(conn, new_jobs, schema=queue_schema)
    return results


async def _drive(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    walks: Sequence[tuple[int, Walk]],
    results: list[Any],
) -> None:
    """Run the moves side by side; each round plans the deliveries they ask for by one statement."""
    active: list[tuple[int, Walk, Emit]] = []

    def step(index: int, moving: Walk, sent: Emitted | None, first: bool) -> None:
        try:
            emit = next(moving) if first else moving.send(sent)
        except StopIteration as stop:
            results[index] = stop.value
            return
        active.append((index, moving, emit))

    for index, moving in walks:
        step(index, moving, None, True)
    while active:
        emits, active = active, []
        planned = await _emit(conn, queries, [emit for _, _, emit in emits])
        for index, moving, emit in emits:
            step(index, moving, planned.get(emit.delivery_id), False)


async def _emit(
    conn: psycopg.AsyncConnection[Any], queries: Queries, emits: Sequence[Emit]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    cursor = await conn.execute(
        queries.journey_emit,
        {
            "ids": [e.delivery_id for e in emits],
            "run_ids": [e.run_id for e in emits],
            "steps": [e.step for e in emits],
            "channels": [e.channel for e in emits],
            "render_keys": [e.render_key for e in emits],
            "render_versions": [e.render_version for e in emits],
        },
    )
    return {uuid.UUID(str(row[0])): (row[1], row[2]) for row in await cursor.fetchall()}


def _moves_params(moved: Iterable[Move]) -> dict[str, Any]:
    moves = list(moved)
    log = [t for m in moves for t in m.log]
    return {
        "ids": [m.run_id for m in moves],
        "states": [m.state for m in moves],
        "steps": [m.current for m in moves],
        "outcomes": [json.dumps(m.outcomes) for m in moves],
        "due_in": [m.due_in for m in moves],
        "terminal_reasons": [m.terminal_reason for m in moves],
        "t_run_ids": [t.run_id for t in log],
        "t_steps": [t.step for t in log],
        "t_delivery_ids": [t.delivery_id for t in log],
        "t_from": [t.from_state for t in log],
        "t_to": [t.to_state for t in log],
        "t_reasons": [t.reason for t in log],
        "t_contexts": [t.context for t in log],
    }


class MoverHost(Protocol):
    """What a :class:`Mover` needs of its dispatcher (:class:`chimeway.dispatch.Dispatcher`)."""

    batch_size: int
    schema: str
    queries: Queries

    def connection(self) -> Any: ...


class Mover:
    """Collects the move requests handed in on one event loop into batches (:func:`advance_many`).

    The batch, not the job, owns the work: a job cancelled while it waits leaves its batch to
    commit or roll back whole. A batch that fails is made again one run at a time, so one run that
    cannot be moved (the database refuses it, its definition cannot be read) holds back no other.
    """

    def __init__(self, host: MoverHost, jobs: JobFactories, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.jobs = jobs
        self.loop = loop
        self.tasks: set[asyncio.Task[None]] = set()
        self._requests: list[tuple[uuid.UUID, int, asyncio.Future[Any]]] = []
        self._soon: asyncio.Handle | None = None

    async def advance(self, run_id: uuid.UUID, step: int) -> Any:
        """Move run ``run_id`` for its step ``step`` with the others handed in this turn."""
        future: asyncio.Future[Any] = self.loop.create_future()
        self._requests.append((run_id, step, future))
        if len(self._requests) >= self.host.batch_size:
            self._flush()
        elif self._soon is None:
            self._soon = self.loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        batch, self._requests = self._requests, []
        if batch:
            task = self.loop.create_task(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _move(self, batch: Sequence[tuple[uuid.UUID, int, asyncio.Future[Any]]]) -> list[Any]:
        async with self.host.connection() as conn:
            return await advance_many(
                conn,
                self.host.queries,
                [(run_id, step) for run_id, step, _ in batch],
                queue_schema=self.host.schema,
                jobs=self.jobs,
            )

    async def _run(self, batch: list[tuple[uuid.UUID, int, asyncio.Future[Any]]]) -> None:
        try:
            try:
                results = await self._move(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0][2], exc)
                    return
                for one in batch:  # one at a time: a run that cannot be moved fails alone
                    try:
                        (result,) = await self._move([one])
                    except Exception as single:
                        _fail(one[2], single)
                    else:
                        _resolve(one[2], result)
                return
        except BaseException as exc:  # cancelled (the loop closing): no job waits forever
            for _, _, future in batch:
                _fail(future, exc)
            raise
        for (_, _, future), result in zip(batch, results, strict=True):
            _resolve(future, result)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # its job may have been cancelled while it waited
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
