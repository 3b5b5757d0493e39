"""The shared service lifecycle: supervised restarts with backoff, clean cancellation, wake-ups."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import psycopg
import pytest

from pgqueue.errors import ConfigError
from pgqueue.lifecycle import Backoff, Service, Wakeup, describe_error, jittered, supervise
from tests.helpers import await_until

pytestmark = pytest.mark.anyio


class FakeClock:
    """Time that moves only when a service sleeps (instantly), and a fixed 'random' number."""

    def __init__(self, random: float = 0.0) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._random = random

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()

    def random(self) -> float:
        return self._random


class StuckClock(FakeClock):
    """A clock whose sleeps never end while ``stuck``: whoever sleeps stays asleep until cancelled."""

    stuck = True

    async def sleep(self, seconds: float) -> None:
        if not self.stuck:
            return await super().sleep(seconds)
        self.sleeps.append(seconds)
        await anyio.sleep_forever()


class FlakyService:
    """Fails its first ``failures`` runs like a database that is down, then runs until cancelled."""

    name = "flaky"

    def __init__(
        self, failures: int, clock: FakeClock | None = None, healthy_runs: tuple[int, ...] = ()
    ) -> None:
        self.failures = failures
        self.clock = clock
        self.healthy_runs = healthy_runs
        self.runs = 0
        self.running = anyio.Event()
        self.cancelled = False

    async def run(self) -> None:
        self.runs += 1
        if self.clock is not None and self.runs in self.healthy_runs:
            self.clock.now += 60.0  # this run worked for a minute before it failed
        if self.runs <= self.failures:
            raise psycopg.OperationalError(
                "connection to server failed: password=hunter2 rejected\nDETAIL: the second line"
            )
        self.running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise


def test_flaky_service_satisfies_the_service_protocol() -> None:
    assert isinstance(FlakyService(0), Service)


async def test_supervise_restarts_a_failing_service_with_growing_delays_and_stops_on_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue.lifecycle")
    clock = FakeClock()
    service = FlakyService(failures=5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: supervise(service, min_delay=0.1, max_delay=1.0, clock=clock))
        with anyio.fail_after(5):
            await service.running.wait()
        tg.cancel_scope.cancel()

    assert service.runs == 6
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert service.cancelled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5
    assert "pgqueue flaky failed (OperationalError: connection to server failed: password=***" in warnings[0]
    assert "hunter2" not in caplog.text
    assert "second line" not in caplog.text


async def test_supervise_resets_the_backoff_after_a_run_that_stayed_healthy() -> None:
    clock = FakeClock()
    # Runs 1, 2 fail at once; run 3 worked for a minute before failing; run 4 fails at once.
    service = FlakyService(failures=4, clock=clock, healthy_runs=(3,))

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: supervise(service, min_delay=0.1, max_delay=1.0, healthy_after=5.0, clock=clock)
        )
        with anyio.fail_after(5):
            await service.running.wait()
        tg.cancel_scope.cancel()

    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.1, 0.2])


async def test_supervise_applies_jitter_from_the_clock() -> None:
    clock = FakeClock(random=0.5)
    service = FlakyService(failures=2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: supervise(service, min_delay=1.0, max_delay=8.0, clock=clock))
        with anyio.fail_after(5):
            await service.running.wait()
        tg.cancel_scope.cancel()

    # Jitter only shortens, by up to 10 %: random 0.5 takes 5 % off.
    assert clock.sleeps == pytest.approx([0.95, 1.9])


async def test_cancelling_during_the_backoff_stops_supervise_without_another_run() -> None:
    clock = StuckClock()
    service = FlakyService(failures=1_000)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: supervise(service, clock=clock))
            await await_until(lambda: clock.sleeps)
            tg.cancel_scope.cancel()

    assert service.runs == 1
    assert clock.sleeps == pytest.approx([0.1])


async def test_supervise_returns_when_the_service_finishes_on_its_own() -> None:
    class OneShot:
        name = "one-shot"
        runs = 0

        async def run(self) -> None:
            self.runs += 1

    clock = FakeClock()
    service = OneShot()

    with anyio.fail_after(5):
        await supervise(service, clock=clock)

    assert service.runs == 1
    assert clock.sleeps == []


def test_backoff_doubles_from_min_to_max_and_never_exceeds_it() -> None:
    backoff = Backoff(min_delay=0.5, max_delay=5.0)

    assert [backoff.delay(n) for n in range(1, 7)] == pytest.approx([0.5, 1.0, 2.0, 4.0, 5.0, 5.0])
    assert backoff.delay(10_000) == 5.0  # no float overflow however long the outage
    assert 4.5 <= backoff.delay(9, random=0.999) <= 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_delay": 0}, "0 < min_delay <= max_delay"),
        ({"min_delay": 2.0, "max_delay": 1.0}, "0 < min_delay <= max_delay"),
        ({"factor": 0.5}, "factor must be >= 1"),
        ({"jitter": 1.0}, "jitter must be a fraction"),
    ],
)
def test_backoff_rejects_settings_that_make_no_sense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Backoff(**kwargs)


def test_backoff_attempts_count_from_one() -> None:
    with pytest.raises(ConfigError, match="attempt must be >= 1, got 0"):
        Backoff().delay(0)


def test_jittered_only_shortens() -> None:
    assert jittered(30.0, 0.1, 0.0) == 30.0
    assert jittered(30.0, 0.1, 0.5) == pytest.approx(28.5)
    assert 27.0 < jittered(30.0, 0.1, 0.9999) < 27.01


def test_describe_error_masks_passwords_and_keeps_the_first_line() -> None:
    uri = ValueError('missing "=" after "postgresql://alice:s3cret@db.example/app" in connection info\nmore')
    kv = psycopg.OperationalError("bad conninfo: host=db password='it\\'s secret' user=alice")

    assert (
        describe_error(uri)
        == 'ValueError: missing "=" after "postgresql://alice:***@db.example/app" in connection info'
    )
    assert "secret" not in describe_error(kv)
    assert describe_error(kv).startswith("OperationalError: bad conninfo: host=db password=***")
    assert describe_error(RuntimeError()) == "RuntimeError"
    assert len(describe_error(RuntimeError("x" * 1000))) < 320


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cret PW@127.0.0.1:5432/db",
        "host=127.0.0.1 password=S3cret PW dbname=db",
        "postgresql://app:S3cret%PW@127.0.0.1/db",
        "postgresql://app:S3cretPW@[::1/db",
        "postgresql://app@host/db?sslmode=require&S3cretPW",
    ],
)
def test_describe_error_never_shows_a_malformed_dsn(dsn: str) -> None:
    with pytest.raises(psycopg.ProgrammingError) as caught:
        psycopg.conninfo.conninfo_to_dict(dsn)
    assert "S3cret" in str(caught.value) or "PW" in str(caught.value), "libpq quotes the DSN"

    for described in (describe_error(caught.value), describe_error(caught.value, dsn)):
        assert described == "ProgrammingError: the DSN is malformed (libpq could not parse it)"
    # Given the malformed DSN, any error is described without it
    assert describe_error(RuntimeError(f"while using {dsn}"), dsn).endswith(
        "the DSN is malformed (libpq could not parse it)"
    )


def test_describe_error_masks_the_password_of_the_dsn_wherever_it_appears() -> None:
    dsn = "postgresql://app:p%40ss%20word@db.example/app"
    error = psycopg.OperationalError('FATAL: database "p@ss word" (p%40ss%20word) does not exist')
    described = describe_error(error, dsn)
    assert "p@ss" not in described
    assert "p%40ss" not in described
    assert described == 'OperationalError: FATAL: database "***" (***) does not exist'
    assert describe_error(error, "host=db password=other") == f"OperationalError: {error}"


async def test_wakeup_remembers_a_set_that_arrives_before_the_wait() -> None:
    wakeup = Wakeup(StuckClock())
    wakeup.set()

    with anyio.fail_after(5):
        assert await wakeup.wait(60.0) is True


async def test_wakeup_times_out_on_the_clock() -> None:
    clock = FakeClock()
    wakeup = Wakeup(clock)

    with anyio.fail_after(5):
        assert await wakeup.wait(30.0) is False

    assert clock.sleeps == [30.0]


async def test_wakeup_set_during_a_wait_ends_it() -> None:
    clock = StuckClock()
    wakeup = Wakeup(clock)
    results: list[bool] = []

    async def waiter() -> None:
        results.append(await wakeup.wait(60.0))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            wakeup.set()

    assert results == [True]
    # The set was consumed: the next wait runs to its timeout.
    clock.stuck = False
    with anyio.fail_after(5):
        assert await wakeup.wait(1.0) is False
