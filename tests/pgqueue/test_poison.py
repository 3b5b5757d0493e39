"""One job's bad data is that job's alone.

Error texts and outcome reasons are stored as PostgreSQL can store them, backoffs are bounded, and
a batch of acks the database refuses for one ack's data splits around it: the others land, the bad
one is recorded once with a placeholder. A producer's fetch never fails because of an ack, and
shutdown keeps its deadline even when acks can't be written.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import pgqueue
from pgqueue.completer import Completer
from pgqueue.executor import Ack, Executor, fetch_params, fetch_result
from pgqueue.job import JobState
from pgqueue.poison import MAX_ERROR_CHARS, storable_text
from pgqueue.producer import Producer, QueueConfig
from pgqueue.runtime import Runtime
from pgqueue.store import queries_for
from pgqueue.testing import drain_queue

from ..helpers import await_until

SURROGATE = b"\xff".decode("utf-8", "surrogateescape")


class NulError(pgqueue.Worker, queue="poison", max_attempts=3):
    def perform(self, job: pgqueue.Job) -> None:
        raise ValueError("unexpected byte in payload: \x00")


class SurrogateError(pgqueue.Worker, queue="poison", max_attempts=3):
    def perform(self, job: pgqueue.Job) -> None:
        raise ValueError("can't open file b'\\xff': " + SURROGATE)


class HugeBackoff(pgqueue.Worker, queue="poison", max_attempts=100):
    def perform(self, job: pgqueue.Job) -> None:
        raise RuntimeError("upstream down")

    def backoff(self, job: pgqueue.Job) -> float:
        return 2.0**50  # what 2 ** job.attempt reaches on attempt 50


class Reasons(pgqueue.Worker, queue="poison", max_attempts=1):
    """Returns or raises the outcome its args name, with a reason that is huge, has NUL, or both."""

    def perform(self, job: pgqueue.Job) -> Any:
        reason = {"huge": "x" * 1_000_000, "nul": "a\x00b", "surrogate": "c" + SURROGATE}[job.args["reason"]]
        outcome = {"error": pgqueue.Error, "cancel": pgqueue.Cancel, "discard": pgqueue.Discard}[
            job.args["outcome"]
        ](reason)
        if job.args.get("raise"):
            raise outcome
        return outcome


class RaisesHuge(pgqueue.Worker, queue="poison", max_attempts=1):
    def perform(self, job: pgqueue.Job) -> None:
        raise ValueError("x" * 1_000_000)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class RaisesUnprintable(pgqueue.Worker, queue="poison", max_attempts=1):
    def perform(self, job: pgqueue.Job) -> None:
        raise Unprintable


class Fine(pgqueue.Worker, queue="poison"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


def get(conn: psycopg.Connection[Any], schema: str, job_id: int) -> pgqueue.Job:
    conn.rollback()
    job = pgqueue.get_job(conn, job_id, schema=schema)
    assert job is not None
    return job


def last_error(job: pgqueue.Job) -> str:
    return str(job.errors[-1]["error"])


# -- the sanitiser ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300))
def test_storable_text_is_valid_utf8_without_nul_within_the_cap(text: str) -> None:
    stored = storable_text(text, limit=64)
    stored.encode("utf-8")  # raises on a lone surrogate
    assert "\x00" not in stored
    assert len(stored) <= 64
    try:
        clean = "\x00" not in text and len(text) <= 64 and bool(text.encode("utf-8") or True)
    except UnicodeEncodeError:
        clean = False
    if clean:
        assert stored == text, "text that needs nothing is left alone"


@pytest.mark.parametrize(
    "text",
    [
        "NUL \x00 in the middle",
        "\x00" * 20_000,
        "lone surrogate " + SURROGATE + "\udc80\ud800",
        "x" * 1_000_000,
        "mixed \x00 " + SURROGATE * 10_000,
        "emoji 😀 and accents é stay as they are",
    ],
)
def test_storable_text_is_written_by_the_ack_statement_as_given(
    conn: psycopg.Connection[Any], schema: str, text: str
) -> None:
    # Given a job being executed
    job = pgqueue.insert(conn, Fine.new({}), schema=schema)
    conn.commit()
    queries = queries_for(schema)
    params = fetch_params([], queue="poison", demand=1, node="n", producer="p")
    _, (claimed,) = fetch_result(conn.execute(queries.fetch_jobs, params).fetchall())
    conn.commit()

    # When its ack carries the sanitised text
    error = storable_text(text)
    ack = Ack(claimed.id, claimed.attempt, JobState.RETRYABLE, delay=1, error=error)
    acked, _ = fetch_result(conn.execute(queries.fetch_jobs, fetch_params([ack])).fetchall())
    conn.commit()

    # Then PostgreSQL stores it and gives it back unchanged
    assert acked == 1
    assert len(error) <= MAX_ERROR_CHARS
    assert last_error(get(conn, schema, job.id)) == error


# -- what the executor hands the completer ----------------------------------------------------------


def test_errors_and_reasons_are_sanitised_and_capped(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    # Given workers whose errors or outcome reasons carry NUL, lone surrogates or a megabyte
    cases = [
        NulError.new({}, max_attempts=1),
        SurrogateError.new({}, max_attempts=1),
        RaisesHuge.new({}),
        RaisesUnprintable.new({}),
        *(
            Reasons.new({"reason": reason, "outcome": outcome, "raise": raised})
            for reason in ("huge", "nul", "surrogate")
            for outcome in ("error", "cancel", "discard")
            for raised in (False, True)
        ),
    ]
    jobs = pgqueue.insert_all(conn, cases, schema=schema)
    conn.commit()

    # When they run
    drain_queue(dsn, "poison", schema=schema)

    # Then each ends as its outcome says, with one error no longer than the cap, and no raw NUL
    for job in jobs:
        again = get(conn, schema, job.id)
        assert again.state in ("discarded", "cancelled"), again
        (entry,) = again.errors
        error = str(entry["error"])
        assert len(error) <= MAX_ERROR_CHARS
        assert "\x00" not in error
        error.encode("utf-8")
    by_kind = {(j.worker.rsplit(".", 1)[-1], str(j.args)): get(conn, schema, j.id) for j in jobs}
    assert "\\x00" in last_error(by_kind[("NulError", "{}")])
    assert "\\udcff" in last_error(by_kind[("SurrogateError", "{}")])
    assert last_error(by_kind[("RaisesHuge", "{}")]).endswith("… (truncated)")
    assert "Unprintable" in last_error(by_kind[("RaisesUnprintable", "{}")])
    huge_error = by_kind[("Reasons", str({"reason": "huge", "outcome": "error", "raise": False}))]
    assert last_error(huge_error).startswith("Error: 'xxxx")


def test_a_backoff_past_the_bound_falls_back_to_the_default_and_says_which_worker(
    conn: psycopg.Connection[Any], dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = pgqueue.insert(conn, HugeBackoff.new({}), schema=schema)
    conn.commit()

    with caplog.at_level(logging.WARNING, logger="pgqueue.executor"):
        drain_queue(dsn, "poison", schema=schema)

    again = get(conn, schema, job.id)
    assert again.state == "retryable"
    due_in = (again.scheduled_at - datetime.now(UTC)).total_seconds()
    assert 0 < due_in <= (15 + 2) * 1.1, "the default backoff of attempt 1"
    (warning,) = [r.getMessage() for r in caplog.records if "backoff returned" in r.getMessage()]
    assert "test_poison.HugeBackoff.backoff returned 1125899906842624.0" in warning


# -- the completer isolates what the database refuses ----------------------------------------------


def claim(conn: psycopg.Connection[Any], schema: str, count: int) -> list[pgqueue.Job]:
    """Insert ``count`` Fine jobs and claim them (executing, attempt 1), as a producer would."""
    pgqueue.insert_all(conn, [Fine.new({"i": i}) for i in range(count)], schema=schema)
    conn.commit()
    params = fetch_params([], queue="poison", demand=count, node="n", producer="p")
    _, jobs = fetch_result(conn.execute(queries_for(schema).fetch_jobs, params).fetchall())
    conn.commit()
    return sorted(jobs)


@pytest.fixture
async def pool(dsn: str, schema: str) -> Any:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, kwargs={"autocommit": True}) as opened:
        yield opened


def refuse_updates_of(conn: psycopg.Connection[Any], schema: str, job_id: int) -> None:
    """A trigger that fails every update of one job with a data exception, whatever the update."""
    function = sql.Identifier(schema, "refuse_one_job")
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.id = {} THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; "
            "RETURN NEW; END $$"
        ).format(function, sql.Literal(job_id))
    )
    conn.execute(
        sql.SQL("CREATE TRIGGER refuse BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(schema, "jobs"), function
        )
    )
    conn.commit()


@pytest.mark.anyio
async def test_a_refused_ack_is_replaced_once_and_the_rest_of_its_batch_lands(
    conn: psycopg.Connection[Any], schema: str, pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given ten executing jobs and their acks, one of which PostgreSQL can't store (a raw NUL and
    # a delay past its timestamps, as an ack built by hand could carry)
    jobs = claim(conn, schema, 10)
    bad = jobs[4]
    completer = Completer(pool, schema)
    for job in jobs:
        if job is bad:
            await completer.ack(Ack(job.id, 1, JobState.RETRYABLE, delay=2.0**50, error="oops \x00"))
        else:
            await completer.ack(Ack(job.id, 1, JobState.COMPLETED))

    # When the completer writes them
    with caplog.at_level(logging.WARNING, logger="pgqueue.completer"):
        with anyio.fail_after(10):
            await completer.flush()

    # Then nine complete, and the bad one keeps its state with one placeholder error
    states = {job.id: get(conn, schema, job.id).state for job in jobs}
    assert states == {job.id: "completed" for job in jobs} | {bad.id: "retryable"}
    again = get(conn, schema, bad.id)
    (entry,) = again.errors
    assert entry["error"].startswith("pgqueue could not record this attempt's outcome as given")
    assert again.scheduled_at - datetime.now(UTC) < timedelta(days=1), "the default backoff"
    assert (completer.written, completer.replaced, completer.backlog) == (10, 1, 0)
    assert len([r for r in caplog.records if f"ack of job {bad.id}" in r.getMessage()]) == 1


@pytest.mark.anyio
async def test_an_ack_refused_in_every_form_is_dropped_after_three_tries_without_stalling(
    conn: psycopg.Connection[Any], schema: str, pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = claim(conn, schema, 5)
    broken = jobs[2]
    refuse_updates_of(conn, schema, broken.id)
    completer = Completer(pool, schema)
    for job in jobs:
        await completer.ack(Ack(job.id, 1, JobState.COMPLETED))

    with caplog.at_level(logging.WARNING, logger="pgqueue.completer"), anyio.fail_after(10):
        await completer.flush()

    states = {job.id: get(conn, schema, job.id).state for job in jobs}
    assert states == {job.id: "completed" for job in jobs} | {broken.id: "executing"}
    assert (completer.replaced, completer.dropped, completer.backlog) == (1, 1, 0)
    assert any("refuses every form of its ack" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad_error", ["client-side: " + SURROGATE, "server-side: \x00"], ids=["surrogate", "nul"]
)
async def test_a_producer_fetch_goes_on_without_acks_that_poison_it(
    conn: psycopg.Connection[Any], schema: str, pool: Any, bad_error: str
) -> None:
    # Given acks waiting in the completer, one of which can't be encoded or stored
    done, bad = claim(conn, schema, 2)
    completer = Completer(pool, schema)
    await completer.ack(Ack(done.id, 1, JobState.COMPLETED))
    await completer.ack(Ack(bad.id, 1, JobState.RETRYABLE, delay=1, error=bad_error))
    waiting = pgqueue.insert(conn, Fine.new({"waiting": True}), schema=schema)
    conn.commit()

    async def register(producer: Producer) -> None:
        return None

    producer = Producer(
        "poison", QueueConfig(5), pool, schema, "node", Executor(completer=completer.ack), completer, register
    )

    # When the producer fetches, taking those acks along
    with anyio.fail_after(10):
        await producer._dispatch()  # one fetch, as the producer's loop makes it

        # Then the fetch claimed the waiting job, and the acks went back to the completer, which
        # writes the good one and a placeholder for the bad one
        assert producer.fetched == 1
        assert completer.backlog >= 2
        await await_until(lambda: not producer.running)
        await completer.flush()
    assert get(conn, schema, waiting.id).state == "completed"
    assert get(conn, schema, done.id).state == "completed"
    again = get(conn, schema, bad.id)
    assert again.state == "retryable"
    assert last_error(again).startswith("pgqueue could not record")


# -- a node with poison jobs ---------------------------------------------------------------------


@pytest.fixture
def make_runtime(dsn: str, schema: str) -> Any:
    def make(**options: Any) -> Runtime:
        defaults: dict[str, Any] = {
            "schema": schema,
            "queues": {"poison": 5, "other": 5},
            "plugins": [],
            "shutdown_grace_period": 1.0,
            "shutdown_flush_timeout": 2.0,
        }
        return Runtime(dsn, **{**defaults, **options})

    return make


@pytest.mark.anyio
async def test_poison_jobs_record_their_errors_and_every_other_job_completes(
    conn: psycopg.Connection[Any], schema: str, make_runtime: Any
) -> None:
    # Given a NUL error, a lone surrogate, a huge backoff and a huge reason among ordinary jobs,
    # in the same queue and in another
    poison = pgqueue.insert_all(
        conn,
        [
            NulError.new({}),
            SurrogateError.new({}),
            HugeBackoff.new({}),
            Reasons.new({"reason": "huge", "outcome": "error"}, max_attempts=5),
        ],
        schema=schema,
    )
    ordinary = pgqueue.insert_all(
        conn, [Fine.new({"i": i}) for i in range(20)] + [Fine.new({}, queue="other")], schema=schema
    )
    conn.commit()

    # When a node runs both queues
    runtime = make_runtime()
    async with runtime:
        await await_until(
            lambda: all(get(conn, schema, j.id).state == "completed" for j in ordinary), timeout=15
        )
        await await_until(
            lambda: all(get(conn, schema, j.id).state == "retryable" for j in poison), timeout=15
        )
        started = time.monotonic()
    # Then shutdown keeps its deadline
    assert time.monotonic() - started < 1.0 + 2.0 + 1.0

    # And each poison job recorded one sanitised error
    nul, surrogate, backoff, huge = (get(conn, schema, j.id) for j in poison)
    assert "unexpected byte in payload: \\x00" in last_error(nul)
    assert "can't open file b'\\xff': \\udcff" in last_error(surrogate)
    assert last_error(backoff).startswith("RuntimeError: upstream down")
    assert (backoff.scheduled_at - datetime.now(UTC)).total_seconds() < 60
    assert len(last_error(huge)) <= MAX_ERROR_CHARS
    assert all(len(j.errors) == 1 for j in (nul, surrogate, backoff, huge))
    assert runtime.completer.replaced == 0, "sanitised at the source: nothing needed replacing"


@pytest.mark.anyio
async def test_stop_keeps_its_deadline_and_counts_the_acks_it_could_not_write(
    make_runtime: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # (a long poll: no producer fetches, and so takes the acks, on its own)
    runtime = make_runtime(shutdown_grace_period=0.2, shutdown_flush_timeout=0.5, poll_interval=30)

    async def outage(batch: list[Ack]) -> None:
        raise psycopg.OperationalError("the server closed the connection")

    with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="pgqueue.runtime"):
        async with runtime:
            # Given a database that can't take acks any more, and two acks waiting
            monkeypatch.setattr(runtime.completer, "_write", outage)
            await runtime.completer.ack(Ack(1, 1, JobState.COMPLETED))
            await runtime.completer.ack(Ack(2, 1, JobState.COMPLETED))
            # When the node stops
            started = time.monotonic()
        # Then it returns within the grace period and the deadline, and says what it left
        assert time.monotonic() - started < 0.2 + 0.5 + 0.5
    assert any("2 acks could not be written" in r.getMessage() for r in caplog.records)
