"""A value read from the database at most once per short interval, shared by concurrent readers.

Counting jobs is the dearest read of the dashboard, and the same counts serve the queues page,
the live counts every open page polls and the Chimeway summary. :class:`Recent` keeps the last
result for ``seconds`` and lets one caller read while the others wait for that same read, so ten
open tabs cost one count per interval, not ten. ``seconds=0`` reads every time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

__all__ = ["Recent"]

T = TypeVar("T")


class Recent(Generic[T]):
    """``await recent.get()``: the result of ``read()``, at most ``seconds`` old."""

    def __init__(
        self, read: Callable[[], Awaitable[T]], seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be 0 or more, got {seconds!r}")
        self.read = read
        self.seconds = seconds
        self.clock = clock
        self._value: tuple[float, T] | None = None
        self._reading = anyio.Lock()

    def _fresh(self) -> T | None:
        if self._value is not None and self.clock() - self._value[0] < self.seconds:
            return self._value[1]
        return None

    async def get(self) -> T:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._reading:
            # Someone else may have read while this caller waited for the lock.
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            started = self.clock()
            value = await self.read()
            self._value = (started, value)
            return value
