"""Workers shared by the pgqueue tests. Each records what it saw in ``SEEN`` (thread-safe)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio

import pgqueue

SEEN: list[tuple[str, Any]] = []
_lock = threading.Lock()


def record(name: str, value: Any) -> None:
    with _lock:
        SEEN.append((name, value))


class Ok(pgqueue.Worker, queue="alpha"):
    def perform(self, job: pgqueue.Job) -> None:
        record("ok", job.args)


class AsyncOk(pgqueue.Worker, queue="alpha"):
    async def perform(self, job: pgqueue.Job) -> str:
        record("async_ok", job.args)
        return "done"


class Outcomes(pgqueue.Worker, queue="alpha"):
    """Does what its args say: ok, cancel, discard, error, raise, snooze, crash."""

    def perform(self, job: pgqueue.Job) -> Any:
        action = job.args.get("action", "ok")
        if action == "ok":
            return None
        if action == "cancel":
            return pgqueue.Cancel("because")
        if action == "discard":
            return pgqueue.Discard("nope")
        if action == "error":
            return pgqueue.Error("failed")
        if action == "raise":
            raise RuntimeError("FAILED")
        if action == "snooze":
            return pgqueue.Snooze(job.args.get("seconds", 60))
        if action == "raise_cancel":
            raise pgqueue.Cancel("raised")
        raise AssertionError(f"unknown action {action}")


class Sleepy(pgqueue.Worker, queue="alpha"):
    async def perform(self, job: pgqueue.Job) -> None:
        await anyio.sleep(job.args["seconds"])


class SyncSleepy(pgqueue.Worker, queue="alpha"):
    def timeout(self, job: pgqueue.Job) -> float | None:
        return float(job.args["timeout"])

    def perform(self, job: pgqueue.Job) -> None:
        deadline = time.monotonic() + job.args["seconds"]
        while time.monotonic() < deadline and not pgqueue.is_cancelled():
            time.sleep(0.001)


class TimesOut(pgqueue.Worker, queue="alpha"):
    def timeout(self, job: pgqueue.Job) -> float | None:
        return 0.005

    def backoff(self, job: pgqueue.Job) -> float:
        return 1

    async def perform(self, job: pgqueue.Job) -> None:
        await anyio.sleep(0.2)


class Chain(pgqueue.Worker, queue="chain"):
    """Inserts the next link until `left` reaches 0 (for drain with_recursion)."""

    dsn: str = ""
    schema: str = "public"

    def perform(self, job: pgqueue.Job) -> None:
        import psycopg

        left = job.args["left"]
        if left > 0:
            with psycopg.connect(Chain.dsn) as conn:
                pgqueue.insert(conn, Chain.new({"left": left - 1}), schema=Chain.schema)


class UniqueDefault(pgqueue.Worker, queue="uniq", unique={"period": 60}):
    def perform(self, job: pgqueue.Job) -> None:
        pass


class UniqueForever(pgqueue.Worker, queue="uniq", unique=True):
    def perform(self, job: pgqueue.Job) -> None:
        pass
