"""Small helpers shared by the tests: waiting on a condition instead of sleeping, counting statements."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import psycopg

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


class CountingCursor(psycopg.Cursor[Any]):
    """Counts the statements and COPYs run through cursors of this class (``cursor_factory``)."""

    executes = 0
    copies = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.executes += 1
        return super().execute(*args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.copies += 1
        return super().copy(*args, **kwargs)

    @classmethod
    def reset(cls) -> None:
        cls.executes = cls.copies = 0

    @classmethod
    def statements(cls) -> int:
        return cls.executes + cls.copies


class AsyncCountingCursor(psycopg.AsyncCursor[Any]):
    """The async twin of :class:`CountingCursor`."""

    executes = 0
    copies = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        AsyncCountingCursor.executes += 1
        return await super().execute(*args, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        AsyncCountingCursor.copies += 1
        return super().copy(*args, **kwargs)

    @classmethod
    def reset(cls) -> None:
        cls.executes = cls.copies = 0

    @classmethod
    def statements(cls) -> int:
        return cls.executes + cls.copies


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus scrape as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def explaining(dsn: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """A connection whose statements, nested ones included, report their plans (auto_explain,
    with actual rows) as notices, collected in the list beside it."""
    plans: list[str] = []
    with psycopg.connect(dsn) as conn:
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_analyze = on")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_level = 'notice'")
        conn.commit()
        yield conn, plans
