"""The completer: batches acks, and never loses one when a producer takes acks mid-flush."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pgqueue.completer import Completer
from pgqueue.executor import Ack
from pgqueue.job import JobState

pytestmark = pytest.mark.anyio


def ack(job_id: int) -> Ack:
    return Ack(job_id, 1, JobState.COMPLETED)


async def test_acks_taken_by_a_producer_during_a_flush_are_neither_lost_nor_written_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    completer = Completer(None, "public")  # type: ignore[arg-type]
    written: list[list[int]] = []
    release = anyio.Event()
    writing = anyio.Event()

    async def slow_write(batch: list[Ack]) -> None:
        writing.set()
        await release.wait()
        written.append([a.job_id for a in batch])

    monkeypatch.setattr(completer, "_write", slow_write)
    for job_id in (1, 2, 3):
        await completer.ack(ack(job_id))
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.flush)
        await writing.wait()
        await completer.ack(ack(4))
        await completer.ack(ack(5))
        taken = completer.take()  # a producer writes these with its fetch
        await completer.ack(ack(6))
        release.set()
    assert [a.job_id for a in taken] == [4, 5]
    assert written == [[1, 2, 3], [6]]
    assert completer.backlog == 0


async def test_acks_a_producer_could_not_write_are_written_by_the_completer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    completer = Completer(None, "public")  # type: ignore[arg-type]
    written: list[int] = []

    async def write(batch: list[Ack]) -> None:
        written.extend(a.job_id for a in batch)

    monkeypatch.setattr(completer, "_write", write)
    await completer.ack(ack(1))
    taken = completer.take()
    await completer.ack(ack(2))
    completer.give_back(taken)
    await completer.flush()
    assert written == [1, 2]


class FastClock:
    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        return None

    def random(self) -> float:
        return 0.0


async def test_a_failed_write_keeps_the_batch_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    completer = Completer(None, "public", clock=FastClock())  # type: ignore[arg-type]
    attempts: list[list[int]] = []

    async def flaky(batch: list[Ack]) -> Any:
        attempts.append([a.job_id for a in batch])
        if len(attempts) < 3:
            raise OSError("connection reset")

    monkeypatch.setattr(completer, "_write", flaky)
    await completer.ack(ack(1))
    await completer.flush()
    assert attempts == [[1], [1], [1]]
    assert completer.backlog == 0


async def test_a_batch_that_fails_while_a_producer_takes_acks_comes_back_to_the_completer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    completer = Completer(None, "public", clock=FastClock())  # type: ignore[arg-type]
    written: list[list[int]] = []
    release = anyio.Event()
    writing = anyio.Event()

    async def cut_off_once(batch: list[Ack]) -> None:
        if not written and not release.is_set():
            writing.set()
            await release.wait()
            raise OSError("the server closed the connection")
        written.append([a.job_id for a in batch])

    monkeypatch.setattr(completer, "_write", cut_off_once)
    for job_id in (1, 2, 3):
        await completer.ack(ack(job_id))
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.flush)
        await writing.wait()
        await completer.ack(ack(4))
        taken = completer.take()  # a producer writes this one with its fetch
        release.set()
    assert [a.job_id for a in taken] == [4]
    assert written == [[1, 2, 3]], "the failed batch went back to the completer, not to the producer"
    assert completer.backlog == 0
