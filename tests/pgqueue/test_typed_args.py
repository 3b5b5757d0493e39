"""Typed job args: a dataclass or pydantic model, validated at insert and decoded at perform."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mypy import api as mypy_api
from psycopg import sql

import pgqueue
from pgqueue.errors import ConfigError
from pgqueue.testing import drain_queue, perform_job

from .test_insert_copy import count_jobs
from .typed_workers import SEEN, Address, Invoice, SendInvoice, SendWelcome, Welcome

TYPING_CHECK = Path(__file__).resolve().parents[1] / "typing_checks" / "typed_args.py"


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    SEEN.clear()


def test_dataclass_args_are_stored_as_their_fields_and_decoded_at_perform(
    conn: psycopg.Connection[Any], dsn: str, schema: str
) -> None:
    args = Welcome(7, "fr", Address("Lyon", "69001"), ["new"], 1.5)
    job = pgqueue.insert(conn, SendWelcome.new(args), schema=schema)
    conn.commit()
    assert job.args == {
        "user_id": 7,
        "locale": "fr",
        "address": {"city": "Lyon", "zip": "69001"},
        "tags": ["new"],
        "score": 1.5,
    }
    result = drain_queue(conn, "typed", schema=schema)
    assert result.success == 1
    assert [args] == SEEN
    assert isinstance(SEEN[0].address, Address)


def test_a_mapping_is_validated_into_the_dataclass() -> None:
    assert SendWelcome.new({"user_id": 3}).args == {
        "user_id": 3,
        "locale": "en",
        "address": None,
        "tags": [],
        "score": 0.0,
    }
    perform_job(SendWelcome, {"user_id": 4, "address": {"city": "Oslo", "zip": "0150"}, "score": 2})
    assert [Welcome(4, address=Address("Oslo", "0150"), score=2)] == SEEN


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        ({"user_id": "seven"}, "user_id", "field 'user_id' must be int, got 'seven'"),
        ({"user_id": True}, "user_id", "field 'user_id' must be int, got True"),
        ({}, "user_id", "field 'user_id' is required"),
        ({"user_id": 1, "email": "x"}, "email", "unknown field 'email'"),
        ({"user_id": 1, "locale": "de"}, "locale", "field 'locale' must be one of \\['en', 'fr'\\]"),
        ({"user_id": 1, "address": {"city": "Lyon"}}, "address.zip", "field 'address.zip' is required"),
        ({"user_id": 1, "tags": ["a", 2]}, "tags[1]", "field 'tags\\[1\\]' must be str, got 2"),
        (Welcome(user_id="7"), "user_id", "field 'user_id' must be int"),  # type: ignore[arg-type]
    ],
)
def test_args_that_do_not_fit_raise_an_error_naming_the_field_and_nothing_is_written(
    conn: psycopg.Connection[Any], dsn: str, schema: str, args: Any, field: str, message: str
) -> None:
    with pytest.raises(pgqueue.ArgsError, match=message) as raised:
        pgqueue.insert_all(conn, [SendWelcome.new({"user_id": 1}), SendWelcome.new(args)], schema=schema)
    assert raised.value.field == field
    assert isinstance(raised.value, ConfigError)
    conn.commit()
    assert count_jobs(dsn, schema) == 0


def test_pydantic_args_are_validated_by_pydantic_and_decoded_at_perform(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(
        conn, SendInvoice.new(Invoice(invoice_id=9, due=dt.date(2027, 1, 31))), schema=schema
    )
    assert job.args == {"invoice_id": 9, "due": "2027-01-31", "lines": []}
    pgqueue.insert(conn, SendInvoice.new({"invoice_id": 10, "due": "2027-02-28"}), schema=schema)
    conn.commit()
    assert drain_queue(conn, "typed", schema=schema).success == 2
    assert [
        Invoice(invoice_id=9, due=dt.date(2027, 1, 31)),
        Invoice(invoice_id=10, due=dt.date(2027, 2, 28)),
    ] == SEEN
    with pytest.raises(
        pgqueue.ArgsError, match="field 'invoice_id': Input should be greater than 0"
    ) as raised:
        SendInvoice.new({"invoice_id": 0, "due": "2027-01-31"})
    assert raised.value.field == "invoice_id"
    with pytest.raises(pgqueue.ArgsError, match="field 'due'"):
        SendInvoice.new({"invoice_id": 1, "due": "someday"})


def test_a_row_whose_args_no_longer_fit_fails_its_attempt_naming_the_field(
    conn: psycopg.Connection[Any], schema: str
) -> None:
    job = pgqueue.insert(conn, SendWelcome.new(Welcome(1)), schema=schema)
    conn.execute(
        sql.SQL("UPDATE {} SET args = %s WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        ('{"user_id": "one"}', job.id),
    )
    conn.commit()
    assert drain_queue(conn, "typed", schema=schema).failure == 1
    stored = pgqueue.get_job(conn, job.id, schema=schema)
    assert "field 'user_id' must be int" in stored.errors[0]["error"]
    assert SEEN == []


def test_a_typed_worker_must_say_its_args_type_and_define_handle() -> None:
    with pytest.raises(ConfigError, match="dataclass or a pydantic model"):

        class NotAType(pgqueue.TypedWorker[dict[str, Any]]):  # type: ignore[type-var]
            def handle(self, args: Any, job: pgqueue.Job) -> None:
                pass

    with pytest.raises(ConfigError, match="define handle"):

        class NoHandle(pgqueue.TypedWorker[Welcome]):
            pass

    with pytest.raises(ConfigError, match="not perform"):

        class WithPerform(pgqueue.TypedWorker[Welcome]):
            def perform(self, job: pgqueue.Job) -> None:
                pass


def test_type_checkers_see_the_declared_types() -> None:
    stdout, _, status = mypy_api.run(
        ["--strict", "--config-file", "", "--show-error-codes", str(TYPING_CHECK)]
    )
    expected = {
        line_no
        for line_no, line in enumerate(TYPING_CHECK.read_text().splitlines(), 1)
        if "# expect-error" in line
    }
    flagged = {int(line.split(":")[1]) for line in stdout.splitlines() if ": error:" in line}
    assert flagged == expected, stdout
    assert re.search(r'Revealed type is "[\w.]*typed_args\.Welcome"', stdout), stdout
    assert status == 1
