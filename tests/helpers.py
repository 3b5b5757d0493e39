"""Small helpers shared by the tests: waiting on a condition instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


class ConditionTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def wait_until(
    condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01, message: str = ""
) -> T:
    """Poll ``condition`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(message or f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


async def await_until(
    condition: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
    message: str = "",
) -> T:
    """The async twin of :func:`wait_until`; ``condition`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise ConditionTimeout(message or f"condition not met within {timeout}s (last value: {value!r})")
        await anyio.sleep(interval)
