"""Rows the client can't decode cost only themselves, and the public API can't write them.

A claimed batch is decoded row by row when a row fails: that row is discarded with an error saying
why, and the rest of the batch runs. ``scheduled_at`` is bounded to times every session time zone
can show, and args and meta nested deeper than the runtime decodes are refused at insert with a
``TypeError``, never a ``RecursionError``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue import options
from pgqueue.insert import COPY_THRESHOLD
from pgqueue.options import MAX_JSON_DEPTH, SCHEDULED_AT_RANGE
from pgqueue.runtime import Runtime
from pgqueue.testing import drain_queue

from ..helpers import await_until

NEW_YORK = "America/New_York"


class Counted(pgqueue.Worker, queue="decode"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


def nested(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    inner = document
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return document


def in_zone(dsn: str, zone: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, options=f"-c timezone={zone}")


def insert_raw(
    conn: psycopg.Connection[Any], schema: str, *, args: str = "{}", scheduled_at: str = "now"
) -> int:
    """A row written by another client, with plain SQL: nothing checks it on the way in."""
    statement = sql.SQL(
        "INSERT INTO {} (worker, queue, args, scheduled_at) VALUES (%s, 'decode', %s::jsonb, %s::timestamptz)"
        " RETURNING id"
    ).format(sql.Identifier(schema, "jobs"))
    row = conn.execute(statement, (Counted.name, args, scheduled_at)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def poisoned(conn: psycopg.Connection[Any], schema: str) -> tuple[list[int], list[int]]:
    """Good jobs with two undecodable rows among them: args nested 2,000 deep (valid jsonb, past
    orjson's 1,024 levels), and a scheduled_at of year 1 UTC, which is 1 BC in New York."""
    good = [
        job.id for job in pgqueue.insert_all(conn, [Counted.new({"i": i}) for i in range(6)], schema=schema)
    ]
    deep = "[" * 2000 + "]" * 2000
    bad = [
        insert_raw(conn, schema, args=json.dumps({"x": 1})[:-1] + ', "deep": ' + deep + "}"),
        insert_raw(conn, schema, scheduled_at="0001-01-01 00:00:00+00"),
    ]
    good += [
        job.id for job in pgqueue.insert_all(conn, [Counted.new({"j": i}) for i in range(6)], schema=schema)
    ]
    conn.commit()
    return good, bad


def states(conn: psycopg.Connection[Any], schema: str, ids: list[int]) -> dict[int, tuple[str, int]]:
    conn.rollback()
    rows = conn.execute(
        sql.SQL("SELECT id, state::text, jsonb_array_length(errors) FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(schema, "jobs")
        ),
        (ids,),
    ).fetchall()
    return {int(i): (str(s), int(n)) for i, s, n in rows}


def last_errors(conn: psycopg.Connection[Any], schema: str, ids: list[int]) -> list[str]:
    conn.rollback()
    rows = conn.execute(
        sql.SQL("SELECT errors -> -1 ->> 'error' FROM {} WHERE id = ANY(%s) ORDER BY id").format(
            sql.Identifier(schema, "jobs")
        ),
        (ids,),
    ).fetchall()
    return [str(row[0]) for row in rows]


@pytest.mark.anyio
async def test_a_node_discards_rows_it_cant_decode_and_runs_the_rest_of_the_batch(
    conn: psycopg.Connection[Any], dsn: str, schema: str, poisoned: tuple[list[int], list[int]]
) -> None:
    good, bad = poisoned
    # Given a node whose session is west of UTC, claiming the whole batch at once
    runtime = Runtime(in_zone(dsn, NEW_YORK), schema=schema, queues={"decode": 20}, plugins=[])

    # When it runs
    async with runtime:
        await await_until(
            lambda: all(s[0] in ("completed", "discarded") for s in states(conn, schema, good + bad).values())
        )

    # Then every good job completed once, and each bad row was discarded with one error saying why
    found = states(conn, schema, good + bad)
    assert {i: found[i] for i in good} == dict.fromkeys(good, ("completed", 0))
    assert {i: found[i] for i in bad} == dict.fromkeys(bad, ("discarded", 1))
    deep_error, time_error = last_errors(conn, schema, bad)
    assert deep_error.startswith("pgqueue could not decode this job's row (JSONDecodeError: depth limit")
    assert time_error.startswith("pgqueue could not decode this job's row (DataError: timestamp too small")


def test_drain_queue_discards_rows_it_cant_decode_too(
    conn: psycopg.Connection[Any], dsn: str, schema: str, poisoned: tuple[list[int], list[int]]
) -> None:
    good, bad = poisoned
    result = drain_queue(in_zone(dsn, NEW_YORK), "decode", schema=schema)
    assert (result.success, result.discard) == (len(good), len(bad))
    assert {state for state, _ in states(conn, schema, bad).values()} == {"discarded"}


# -- the public API can't write such rows -------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
        datetime(9000, 1, 1, 0, 0, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, tzinfo=timezone(timedelta(hours=-12))),
    ],
)
def test_scheduled_at_outside_the_range_every_time_zone_shows_is_refused(when: datetime) -> None:
    with pytest.raises(
        pgqueue.ConfigError, match="scheduled_at must be between 1970-01-01 and 9000-01-01 UTC"
    ):
        Counted.new({}, scheduled_at=when)


@pytest.mark.parametrize("zone", [NEW_YORK, "Asia/Tokyo", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_ends_of_the_scheduled_at_range_read_back_in_every_time_zone(
    dsn: str, schema: str, zone: str
) -> None:
    earliest, latest = SCHEDULED_AT_RANGE
    with psycopg.connect(in_zone(dsn, zone)) as conn:
        jobs = pgqueue.insert_all(
            conn,
            [Counted.new({}, scheduled_at=earliest), Counted.new({}, scheduled_at=latest)],
            schema=schema,
        )
        copied = pgqueue.insert_all(
            conn, [Counted.new({}, scheduled_at=latest)] * COPY_THRESHOLD, schema=schema
        )
        read = pgqueue.all_jobs(conn, pgqueue.JobFilter(ids=[j.id for j in jobs + copied[:1]]), schema=schema)
    assert sorted(j.scheduled_at for j in read) == [earliest, latest, latest]


def test_update_job_refuses_a_scheduled_at_out_of_range(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(conn, Counted.new({}), schema=schema)
    with pytest.raises(pgqueue.ConfigError, match="scheduled_at must be between"):
        pgqueue.update_job(conn, job, {"scheduled_at": datetime.max.replace(tzinfo=UTC)}, schema=schema)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 2000, 5000, 100_000])
@pytest.mark.parametrize("field", ["args", "meta"])
def test_json_nested_deeper_than_the_runtime_decodes_is_a_type_error(field: str, depth: int) -> None:
    options = {"args": nested(depth), "meta": {}} if field == "args" else {"args": {}, "meta": nested(depth)}
    with pytest.raises(TypeError, match=f"{field} nests"):
        Counted.new(options["args"], meta=options["meta"])


def test_json_at_the_runtimes_limit_is_stored_or_refused_as_a_type_error_never_a_recursion_error() -> None:
    # Whether Python's encoder recurses this deep depends on the interpreter (3.11 stops at its
    # recursion limit; 3.12 counts C recursion apart): either way the caller sees the documented
    # TypeError or a job whose args round-trip.
    try:
        job = Counted.new(nested(MAX_JSON_DEPTH))
    except TypeError as exc:
        assert "args nests" in str(exc)
    else:
        assert json.loads(job.args_json) == nested(MAX_JSON_DEPTH)


def test_an_encoder_that_runs_out_of_recursion_is_reported_as_a_type_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def recurse_too_deep(value: object, name: str) -> str:
        raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")

    monkeypatch.setattr(options, "_encode_checked", recurse_too_deep)
    with pytest.raises(TypeError, match=f"args nests {MAX_JSON_DEPTH} levels deep, more than Python"):
        Counted.new(nested(MAX_JSON_DEPTH))


def test_update_job_refuses_args_nested_too_deep(conn: psycopg.Connection[Any], schema: str) -> None:
    job = pgqueue.insert(conn, Counted.new({}), schema=schema)
    with pytest.raises(TypeError, match="args nests"):
        pgqueue.update_job(conn, job, {"args": nested(5000)}, schema=schema)


def test_json_nested_as_deep_as_orjson_encodes_round_trips(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    for depth in (254, 300):
        job = pgqueue.insert(conn, Counted.new(nested(depth)), schema=schema)
        (again,) = pgqueue.all_jobs(conn, pgqueue.JobFilter(ids=[job.id]), schema=schema)
        assert again.args == nested(depth)
