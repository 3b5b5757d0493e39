"""Cron entries declared in the database and in ``pgqueue.toml``: the API (sync and async), the
CLI, the leader's plugin firing them once per slot, and ``python -m pgqueue start --config``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import pgqueue
from pgqueue.config_file import load_start_file
from pgqueue.cron_entries import (
    CronNotFoundError,
    aadd_cron,
    add_cron,
    adelete_cron,
    alist_crons,
    aupdate_cron,
    delete_cron,
    list_crons,
    update_cron,
)
from pgqueue.notifier import LocalNotifier
from pgqueue.plugins import PluginContext
from pgqueue.plugins.cron import Cron
from tests.flow.conftest import REPOSITORY
from tests.flow.workers import DSN_VARIABLE, SCHEMA_VARIABLE, Mark
from tests.helpers import wait_until
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


class Report(pgqueue.Worker, queue="reports"):
    def perform(self, job: pgqueue.Job) -> None:
        pass


def test_add_update_delete_round_trip(db: psycopg.Connection[Any], schema: str) -> None:
    add_cron(
        db,
        "nightly",
        "0 3 * * *",
        Report.name,
        schema=schema,
        args={"kind": "daily"},
        timezone="Europe/Berlin",
    )
    update_cron(db, "nightly", schema=schema, expression="@hourly", enabled=False, priority=2)
    [entry] = list_crons(db, schema=schema)
    assert (entry.expression, entry.timezone, entry.enabled, entry.priority) == (
        "@hourly",
        "Europe/Berlin",
        False,
        2,
    )
    assert entry.args == {"kind": "daily"}
    assert list_crons(db, schema=schema, enabled_only=True) == []
    delete_cron(db, "nightly", schema=schema)
    assert list_crons(db, schema=schema) == []
    with pytest.raises(CronNotFoundError, match="cron entry 'nightly' does not exist"):
        delete_cron(db, "nightly", schema=schema)


async def test_the_async_twins_do_the_same(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await aadd_cron(conn, "tick", "* * * * *", Report.name, schema=schema)
        await aupdate_cron(conn, "tick", schema=schema, args={"n": 1})
        assert [(e.name, e.args) for e in await alist_crons(conn, schema=schema)] == [("tick", {"n": 1})]
        await adelete_cron(conn, "tick", schema=schema)
        assert await alist_crons(conn, schema=schema) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"expression": "61 * * * *"},
            "cron entry 'tick': invalid cron expression '61 * * * *': minute field",
        ),
        ({"timezone": "Mars/Olympus"}, "cron entry 'tick': unknown timezone 'Mars/Olympus'"),
        ({"priority": 12}, "cron entry 'tick': priority must be an integer 0..9, got 12"),
        ({"args": {"at": datetime.now(UTC)}}, "cron entry 'tick': args must round-trip through JSON"),
        ({"colour": "red"}, "cron entry 'tick': unknown option 'colour'"),
    ],
)
def test_bad_fields_are_refused_by_name_and_nothing_changes(
    db: psycopg.Connection[Any], schema: str, change: dict[str, Any], message: str
) -> None:
    add_cron(db, "tick", "* * * * *", Report.name, schema=schema)
    with pytest.raises(pgqueue.ConfigError, match=re.escape(message)):
        update_cron(db, "tick", schema=schema, **change)
    [entry] = list_crons(db, schema=schema)
    assert (entry.expression, entry.timezone, entry.priority, entry.args) == (
        "* * * * *",
        "Etc/UTC",
        None,
        {},
    )
    with pytest.raises(pgqueue.ConfigError, match="cron entry 'other': "):
        add_cron(db, "other", schema=schema, **{"expression": "* * * * *", "worker": Report.name, **change})
    assert [e.name for e in list_crons(db, schema=schema)] == ["tick"]


async def test_the_leader_fires_declared_entries_once_per_minute(
    dsn: str, db: psycopg.Connection[Any], schema: str
) -> None:
    # Given an entry due every minute, a disabled one, and one whose worker isn't loaded here
    add_cron(db, "tick", "* * * * *", Report.name, schema=schema, args={"n": 1}, queue="elsewhere")
    add_cron(db, "off", "* * * * *", Report.name, schema=schema, enabled=False)
    add_cron(db, "stranger", "* * * * *", "not.loaded.Worker", schema=schema)

    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        ctx = PluginContext(pool, dsn, schema, "node-a", LocalNotifier(), lambda: True, lambda queue: None)
        # When two leaders (one after the other) run their round in the same minute
        first = await Cron(database=True).run_once(ctx)
        second = await Cron(database=True).run_once(ctx)

    # Then the enabled entry made one job per minute, with its queue, and nothing else fired
    jobs = pgqueue.all_jobs(db, pgqueue.JobFilter(worker=Report.name), schema=schema)
    assert {job.meta["cron_name"] for job in jobs} == {"tick"}
    assert len(jobs) == len({job.meta["cron_at"] for job in jobs})
    assert {(job.queue, job.args["n"]) for job in jobs} == {("elsewhere", 1)}
    assert first["inserted"] == 1
    assert second["inserted"] + second["conflicts"] == 1


def test_the_cli_manages_cron_entries_with_clear_errors(dsn: str, schema: str) -> None:
    base = ["--dsn", dsn, "--schema", schema]
    added = run_cli(
        "cron",
        "add",
        "tick",
        "--expression",
        "*/5 * * * *",
        "--worker",
        Report.name,
        "--args",
        '{"n": 1}',
        "--timezone",
        "Europe/Paris",
        *base,
    )
    assert added.returncode == 0, added.stderr
    assert "tick" in run_cli("cron", "list", *base).stdout

    for args, fragment in [
        (
            ["add", "bad", "--expression", "* * *", "--worker", "w"],
            "cron entry 'bad': invalid cron expression",
        ),
        (
            ["add", "bad", "--expression", "@daily", "--worker", "w", "--timezone", "Nowhere/City"],
            "cron entry 'bad': unknown timezone 'Nowhere/City'",
        ),
        (
            ["add", "bad", "--expression", "@daily", "--worker", "w", "--args", "[1]"],
            "expected a JSON object",
        ),
        (["update", "tick", "--expression", "0 25 * * *"], "cron entry 'tick': invalid cron expression"),
    ]:
        result = run_cli("cron", *args, *base)
        assert result.returncode == 2, result
        assert fragment in result.stderr
        assert result.stderr.count("\n") == 1
    missing = run_cli("cron", "delete", "ghost", *base)
    assert missing.returncode == 1
    assert "cron entry 'ghost' does not exist" in missing.stderr
    assert run_cli("cron", "delete", "tick", *base).returncode == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[queues]\nmedia = { limit = 5, global_limit = 0 }\n",
            "queues.media: global_limit must be an integer",
        ),
        (
            "[queues]\nmedia = { limit = 5, rate_limit = 5, rate_period = 0 }\n",
            "queues.media: rate_period must",
        ),
        (
            '[[cron]]\nname = "x"\nexpression = "* * * *"\nworker = "w"\n',
            "cron[0] ('x'): invalid cron expression",
        ),
        (
            '[[cron]]\nname = "x"\nexpression = "@daily"\ntimezone = "Moon/Base"\nworker = "w"\n',
            "cron[0] ('x'): unknown timezone 'Moon/Base'",
        ),
        (
            '[[cron]]\nname = "x"\nexpression = "@daily"\nworker = "no.such.Worker"\n',
            "cron[0] ('x'): worker 'no.such.Worker' is not registered",
        ),
        (
            "[plugins]\nlifeline = { rescue_window = -1 }\n",
            "plugins.lifeline: lifeline rescue_window must be",
        ),
        ("colour = 'red'\n", "'colour': unknown key"),
        ("queues = [", "not valid TOML"),
    ],
)
def test_a_bad_settings_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pgqueue.toml"
    path.write_text(text)
    with pytest.raises(pgqueue.ConfigError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        load_start_file(path)


@pytest.mark.slow
def test_start_with_a_config_file_runs_its_queues_and_cron(
    dsn: str, marks: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Given a settings file with a limited queue and a cron entry that fires when the leader boots
    config = tmp_path / "node.toml"
    config.write_text(
        f'schema = "{marks}"\nworkers = ["tests.flow.workers"]\nshutdown_grace = 1\n'
        "[queues]\nlimited = { limit = 2, global_limit = 1 }\n"
        f'[[cron]]\nname = "boot"\nexpression = "@reboot"\nworker = "{Mark.name}"\nargs = {{ seconds = 0 }}\n'
    )
    env = {
        **os.environ,
        DSN_VARIABLE: dsn,
        SCHEMA_VARIABLE: marks,
        "DATABASE_URL": dsn,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pgqueue", "start", "--config", str(config), "--log-level", "warning"],
        cwd=REPOSITORY,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        # When it runs, then the cron job is inserted and run by the file's queue
        query = sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'").format(
            sql.Identifier(marks, "jobs")
        )
        wait_until(lambda: (db.execute(query).fetchone() or (0,))[0] == 1, timeout=30, interval=0.1)
        [job] = pgqueue.all_jobs(db, pgqueue.JobFilter(worker=Mark.name), schema=marks)
        assert job.meta["cron_name"] == "boot"
        ended = sql.SQL("SELECT count(*) FROM {} WHERE ended_at IS NOT NULL").format(
            sql.Identifier(marks, "flow_marks")
        )
        assert (db.execute(ended).fetchone() or (0,))[0] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr.decode(errors="replace")
