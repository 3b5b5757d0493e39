"""Queues declared in the database: the API (sync and async), the CLI, and running nodes that
follow changes without a restart."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgqueue
from pgqueue.runtime import Runtime
from tests.helpers import await_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


def signals(db: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    query = sql.SQL("SELECT action, queue FROM {} ORDER BY id").format(
        sql.Identifier(schema, "pgqueue_signals")
    )
    return [(a, q) for a, q in db.execute(query).fetchall()]


def test_add_list_update_delete_round_trip(db: psycopg.Connection[Any], schema: str) -> None:
    pgqueue.add_queue(db, "media", schema=schema, limit=5, global_limit=3)
    pgqueue.add_queue(db, "mail", schema=schema, limit=2, rate_limit=10, rate_period=60)

    listed = {info.name: info.config for info in pgqueue.list_queues(db, schema=schema)}
    assert listed["media"].global_limit == 3
    assert listed["media"].rate_limit is None
    assert (listed["mail"].rate_limit, listed["mail"].rate_period) == (10, 60.0)

    updated = pgqueue.update_queue(db, "media", schema=schema, global_limit=None, paused=True)
    assert updated.config.global_limit is None
    assert updated.config.paused
    assert updated.config.limit == 5
    info = pgqueue.get_queue(db, "media", schema=schema)
    assert info is not None
    assert info.config == updated.config

    pgqueue.delete_queue(db, "mail", schema=schema)
    assert [i.name for i in pgqueue.list_queues(db, schema=schema)] == ["media"]
    # every change told the nodes which queue to re-read
    assert signals(db, schema) == [("configure", q) for q in ("media", "mail", "media", "mail")]


async def test_the_async_twins_do_the_same(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await pgqueue.aadd_queue(conn, "media", schema=schema, limit=5)
        await pgqueue.aupdate_queue(conn, "media", schema=schema, rate_limit=7)
        info = await pgqueue.aget_queue(conn, "media", schema=schema)
        assert info is not None
        assert (info.config.rate_limit, info.config.rate_period) == (7, 1.0)
        assert [i.name for i in await pgqueue.alist_queues(conn, schema=schema)] == ["media"]
        await pgqueue.adelete_queue(conn, "media", schema=schema)
        assert await pgqueue.aget_queue(conn, "media", schema=schema) is None
        with pytest.raises(pgqueue.QueueNotFoundError, match="queue 'media' does not exist"):
            await pgqueue.adelete_queue(conn, "media", schema=schema)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"limit": 0}, "queue 'media': limit must be an integer 1..10000, got 0"),
        ({"global_limit": -1}, "queue 'media': global_limit must be an integer 1..1000000, got -1"),
        (
            {"rate_limit": 5, "rate_period": 0},
            "queue 'media': rate_period must be a number of seconds greater than 0",
        ),
        ({"speed": 3}, "queue 'media': unknown option 'speed'"),
    ],
)
def test_a_bad_update_names_the_field_and_changes_nothing(
    db: psycopg.Connection[Any], schema: str, change: dict[str, Any], message: str
) -> None:
    pgqueue.add_queue(db, "media", schema=schema, limit=5, global_limit=3)
    before = signals(db, schema)
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        pgqueue.update_queue(db, "media", schema=schema, **change)
    info = pgqueue.get_queue(db, "media", schema=schema)
    assert info is not None
    assert (info.config.limit, info.config.global_limit) == (5, 3)
    assert signals(db, schema) == before


def test_unknown_and_duplicate_queues_are_refused(db: psycopg.Connection[Any], schema: str) -> None:
    with pytest.raises(pgqueue.QueueNotFoundError, match="queue 'ghost' does not exist"):
        pgqueue.update_queue(db, "ghost", schema=schema, limit=3)
    pgqueue.add_queue(db, "media", schema=schema, limit=5)
    with pytest.raises(pgqueue.ConfigError, match="queue 'media' exists already"):
        pgqueue.add_queue(db, "media", schema=schema, limit=6)
    assert signals(db, schema) == [("configure", "media")]


async def test_a_running_node_follows_the_table_without_a_restart(
    dsn: str, db: psycopg.Connection[Any], schema: str
) -> None:
    pgqueue.add_queue(db, "media", schema=schema, limit=5)
    async with Runtime(dsn, schema=schema, queues_from_database=True, plugins=[]) as runtime:
        # started from the table
        assert runtime.check_queue("media") is not None

        # a change reaches it
        pgqueue.update_queue(db, "media", schema=schema, limit=7, global_limit=2, rate_limit=30, paused=True)

        def media() -> dict[str, Any] | None:
            return runtime.check_queue("media")

        await await_until(lambda: (media() or {}).get("global_limit") == 2, timeout=10)
        assert media() == {
            **(media() or {}),
            "limit": 7,
            "rate_limit": 30,
            "rate_period": 1.0,
            "paused": True,
        }

        # a queue added later starts, a deleted one stops
        pgqueue.add_queue(db, "mail", schema=schema, limit=1)
        await await_until(lambda: runtime.check_queue("mail") is not None, timeout=10)
        pgqueue.delete_queue(db, "media", schema=schema)
        await await_until(lambda: media() is None, timeout=10)


async def test_a_declared_queue_wins_over_the_code_and_a_bare_name_needs_a_row(
    dsn: str, db: psycopg.Connection[Any], schema: str
) -> None:
    pgqueue.add_queue(db, "media", schema=schema, limit=4, global_limit=2)
    async with Runtime(dsn, schema=schema, queues={"media": 10}, plugins=[]) as runtime:
        assert (runtime.check_queue("media") or {})["global_limit"] == 2
    with pytest.raises(pgqueue.ConfigError, match="queue 'mail' is not declared in the database"):
        async with Runtime(dsn, schema=schema, queues={"mail": None}, plugins=[]):
            pass


def test_the_cli_manages_queues_with_clear_errors_and_exit_codes(dsn: str, schema: str) -> None:
    base = ["--dsn", dsn, "--schema", schema]
    added = run_cli("queues", "add", "media", "--limit", "5", "--global-limit", "3", *base)
    assert added.returncode == 0, added.stderr
    assert "media" in added.stdout
    assert "global_limit=3" in added.stdout

    updated = run_cli("queues", "update", "media", "--rate-limit", "50", "--global-limit", "none", *base)
    assert updated.returncode == 0, updated.stderr
    listed = run_cli("queues", "list", "--json", *base)
    assert json.loads(listed.stdout) == [
        {"name": "media", "limit": 5, "paused": False, "global_limit": None, "rate_limit": 50,
         "rate_period": 1.0, "partitioned": False}
    ]  # fmt: skip

    for args, fragment in [
        (["add", "mail", "--limit", "0"], "--limit: must be at least 1, got '0'"),
        (["add", "mail", "--limit", "2", "--global-limit", "-1"], "--global-limit: must be at least 1"),
        (
            ["add", "mail", "--limit", "2", "--rate-limit", "5", "--rate-period", "0"],
            "--rate-period: must be",
        ),
        (["add", "mail"], "queues add needs --limit N"),
    ]:
        result = run_cli("queues", *args, *base)
        assert result.returncode == 2, result
        assert fragment in result.stderr
        assert result.stderr.count("\n") == 1

    missing = run_cli("queues", "update", "ghost", "--limit", "3", *base)
    assert missing.returncode == 1
    assert "queue 'ghost' does not exist" in missing.stderr
    deleted = run_cli("queues", "delete", "ghost", *base)
    assert deleted.returncode == 1
    assert "queue 'ghost' does not exist" in deleted.stderr

    assert run_cli("queues", "delete", "media", *base).returncode == 0
    assert run_cli("queues", "list", *base).stdout.strip() == "no queues declared"
