"""The one lifecycle every background part of pgqueue shares: run until cancelled, restart on failure.

A background part (notifier, leader, producer, completer, each plugin) is a :class:`Service`: it has
a ``name`` for the logs and an ``async run()`` that works until it is cancelled. The runtime starts
each one with :func:`supervise` inside its task group::

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise, notifier)
        tg.start_soon(supervise, leader)
        ...
        tg.cancel_scope.cancel()  # stops them all

:func:`supervise` turns a crash of ``run()`` (the database went away, a bug) into one warning, a
pause that grows with each consecutive failure (:class:`Backoff`), and a restart, so one broken part
never takes the task group down with it. Time and randomness come from a :class:`Clock`, which
tests replace to make the pauses deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import re
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import quote

import anyio
import psycopg

from .errors import ConfigError

__all__ = [
    "MALFORMED_DSN",
    "SYSTEM_CLOCK",
    "Backoff",
    "Clock",
    "Service",
    "SystemClock",
    "Wakeup",
    "check_conninfo",
    "describe_error",
    "jittered",
    "supervise",
]

logger = logging.getLogger(__name__)

# Connection errors from libpq can echo the connection string; these hide the secret parts of both
# the URI form (postgresql://user:secret@host) and the key=value form (password=secret).
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:@/\s]*):[^@\s]*@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_MAX_ERROR_CHARS = 300
#: What is shown instead of libpq's text when a DSN can't be parsed.
MALFORMED_DSN = "the DSN is malformed (libpq could not parse it)"
# Fragments of libpq's messages about a connection string it can't parse; each quotes the DSN.
_CONNINFO_PARSE_ERRORS = (
    "connection info string",
    "in URI",
    "percent-encoded",
    "invalid connection option",
    "URI query parameter",
)


class Clock(Protocol):
    """Where a service reads time and randomness; replace it in tests to control both."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Pause the calling task for ``seconds`` (a cancellation point)."""
        ...

    def random(self) -> float:
        """A number in ``[0, 1)`` used for jitter."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`anyio.sleep` and :func:`random.random`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def random(self) -> float:
        return _random.random()


SYSTEM_CLOCK: Clock = SystemClock()


@runtime_checkable
class Service(Protocol):
    """A background part of the runtime: ``run()`` works until cancelled; start it with supervise()."""

    @property
    def name(self) -> str:
        """A short name for logs (``"notifier"``, ``"leader"``, ``"producer:media"``)."""
        ...

    async def run(self) -> None:
        """Do the service's work until cancelled; raising means "restart me after a pause"."""
        ...


def jittered(value: float, fraction: float, random: float) -> float:
    """``value`` shortened by up to ``fraction`` of itself, ``random`` in [0, 1) choosing how much.

    Jitter only ever shortens, so ``value`` stays a true upper bound (a lease renewed every
    ``jittered(interval / 2, …)`` seconds is always renewed before it expires), while peers that
    started together drift apart instead of hitting the database in step.
    """
    return value * (1.0 - fraction * random)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential retry delays: ``min_delay`` after the first failure, doubling, capped at ``max_delay``.

    ``delay(attempt, random)`` is the pause before retry number ``attempt`` (1 after the first
    failure), reduced by up to ``jitter`` of itself (see :func:`jittered`).
    """

    min_delay: float = 0.1
    max_delay: float = 10.0
    factor: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.min_delay <= self.max_delay:
            raise ConfigError(
                f"backoff needs 0 < min_delay <= max_delay, got min_delay={self.min_delay!r}, "
                f"max_delay={self.max_delay!r}"
            )
        if self.factor < 1:
            raise ConfigError(f"backoff factor must be >= 1, got {self.factor!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"backoff jitter must be a fraction in [0, 1), got {self.jitter!r}")

    def delay(self, attempt: int, random: float = 0.0) -> float:
        """Seconds to wait before retry ``attempt`` (>= 1); ``random`` in [0, 1) picks the jitter."""
        if attempt < 1:
            raise ConfigError(f"backoff attempt must be >= 1, got {attempt!r}")
        # Past the cap the exponent no longer matters; bounding it keeps huge attempt counts from
        # overflowing a float.
        exponent = min(attempt - 1, 256)
        base = min(self.max_delay, self.min_delay * self.factor**exponent)
        return jittered(base, self.jitter, random)


def describe_error(exc: BaseException, dsn: str | None = None) -> str:
    """``"OperationalError: connection refused"``: an error's type and first line, safe to show.

    Passwords are masked: every occurrence of the one in ``dsn`` when it is given (as written and
    percent-encoded), and the URI and ``password=`` forms in any case. libpq's messages about a DSN
    it can't parse quote the DSN itself, so for those (and for any error, when ``dsn`` is given and
    can't be parsed) the text is a fixed "the DSN is malformed". The text is cut short, so a log
    line never carries a secret or a wall of text.
    """
    name = type(exc).__name__
    if dsn is not None:
        try:
            secret = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        except psycopg.ProgrammingError:
            return f"{name}: {MALFORMED_DSN}"
    else:
        secret = None
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ raises
        lines = []
    text = lines[0] if lines else ""
    if isinstance(exc, psycopg.ProgrammingError) and any(f in text for f in _CONNINFO_PARSE_ERRORS):
        return f"{name}: {MALFORMED_DSN}"
    if isinstance(secret, str) and secret:
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    text = _URI_PASSWORD.sub(r"\g<head>:***@", text)
    text = _KV_PASSWORD.sub(r"\g<head>***", text)
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return f"{name}: {text}" if text else name


async def supervise(
    service: Service,
    *,
    min_delay: float = 0.1,
    max_delay: float = 10.0,
    healthy_after: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Run ``service.run()`` until cancelled, restarting it with growing pauses whenever it raises.

    Each failure logs one warning (the service's name and the error's first line, passwords masked)
    and waits ``Backoff(min_delay, max_delay).delay(n)`` before restart ``n``. A run that lasted at
    least ``healthy_after`` seconds (default ``max_delay``) counted as a success, so the next failure
    waits ``min_delay`` again. Cancellation stops the service and returns quietly. If ``run()``
    returns on its own, the service is finished and so is this function.
    """
    backoff = Backoff(min_delay, max_delay)
    healthy = max_delay if healthy_after is None else healthy_after
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await service.run()
        except Exception as exc:
            # Cancellation is a BaseException and passes straight through: only failures land here.
            if clock.monotonic() - started >= healthy:
                failures = 0
            failures += 1
            delay = backoff.delay(failures, clock.random())
            logger.warning(
                "pgqueue %s failed (%s); restarting in %.2fs (consecutive failure %d)",
                service.name,
                describe_error(exc),
                delay,
                failures,
            )
            if not isinstance(exc, psycopg.Error):
                # Not a database error, so most likely a bug: keep the traceback for whoever debugs
                # it. Database errors skip this, as their text may quote connection details.
                logger.debug("pgqueue %s failure traceback", service.name, exc_info=exc)
            await clock.sleep(delay)
        else:
            logger.debug("pgqueue %s finished", service.name)
            return


class Wakeup:
    """A resettable wake-up call: ``set()`` from anywhere on the loop, ``await wait(timeout)`` in one loop.

    A ``set()`` that arrives while nobody waits is remembered, so the next ``wait`` returns at once:
    a loop can't miss a wake-up that lands while it is busy.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None

    def set(self) -> None:
        """Wake the waiter now, or make its next wait return immediately."""
        self._pending = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (on the clock) for ``set()``; True when woken, False on timeout."""
        if not self._pending:
            if self._clock is SYSTEM_CLOCK:
                await self._wait_on_loop(timeout)
            else:
                await self._wait_on_clock(timeout)
        woken = self._pending
        self._pending = False
        return woken

    async def _wait_on_loop(self, timeout: float) -> None:
        # Every producer waits here between fetches, thousands of times a second under load: a bare
        # future and one timer handle cost a fraction of a task group with a timer task.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _wait_on_clock(self, timeout: float) -> None:
        # A test clock decides when the timeout has passed, so it needs a task that sleeps on it.
        self._event = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:

                async def timer() -> None:
                    await self._clock.sleep(timeout)
                    tg.cancel_scope.cancel()

                tg.start_soon(timer)
                await self._event.wait()
                tg.cancel_scope.cancel()
        finally:
            self._event = None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def check_conninfo(conninfo: str) -> None:
    """Raise :class:`ConfigError` if libpq can't parse ``conninfo``, without quoting it.

    libpq's own message for a malformed DSN quotes the part it choked on, password and all."""
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise ConfigError(MALFORMED_DSN) from None
