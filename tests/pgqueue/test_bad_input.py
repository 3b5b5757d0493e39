"""Arbitrary input to ``new()``/``insert``: a clear error, or a row that reads back identically.

Never a corrupted row, and never an aborted transaction for the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgqueue

from .workers import Ok

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
anything = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=4), st.tuples(st.integers())),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)


@pytest.fixture
def session_conn(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        yield conn


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.one_of(anything, st.dictionaries(st.text(max_size=8), anything, max_size=4)),
    tags=st.one_of(st.lists(st.one_of(st.text(max_size=6), st.integers(), st.none()), max_size=4), anything),
    priority=st.one_of(st.integers(-3, 12), anything),
    schedule_in=st.one_of(st.none(), st.floats(), st.integers(-(10**12), 10**12), anything),
)
def test_new_and_insert_either_refuse_clearly_or_round_trip(
    session_conn: psycopg.Connection[Any], schema: str, args: Any, tags: Any, priority: Any, schedule_in: Any
) -> None:
    conn = session_conn
    options: dict[str, Any] = {"tags": tags, "priority": priority}
    if schedule_in is not None:
        options["schedule_in"] = schedule_in
    try:
        new = Ok.new(args, **options)
    except (TypeError, pgqueue.ConfigError) as exc:
        assert str(exc), "errors say what is wrong"
        return
    job = pgqueue.insert(conn, new, schema=schema)
    (read_back,) = pgqueue.all_jobs(conn, pgqueue.JobFilter(ids=[job.id]), schema=schema)
    assert read_back.args == ({} if args is None else args)
    assert read_back.tags == list(new.tags)
    assert read_back.priority == priority
    if new.schedule_in is not None:
        delta = (read_back.scheduled_at - read_back.inserted_at).total_seconds()
        assert abs(delta - new.schedule_in) < 1e-3 * max(1.0, abs(new.schedule_in))
    # The caller's transaction is still usable.
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.rollback()


def test_extreme_but_valid_values_round_trip(conn: psycopg.Connection[Any], schema: str) -> None:
    new = Ok.new(
        {"big": 2**62, "tiny": 5e-324, "deep": [[[[{"k": "ü😀"}]]]], "empty": {}},
        max_attempts=2**31 - 1,
        schedule_in=timedelta(days=3650),
        tags=["x" * 1000],
    )
    job = pgqueue.insert(conn, new, schema=schema)
    assert job.args == new.args
    assert job.max_attempts == 2**31 - 1
