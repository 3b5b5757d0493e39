"""``python -m pgqueue``: migrate and version, and one clear line for every error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue import migrate as m
from tests.system.workers import Record


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pgqueue", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_prints_package_and_schema_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("pgqueue ")
    assert "schema version" in result.stdout


def test_migrate_twice_second_run_does_nothing_and_says_so(dsn: str, empty_schema: str) -> None:
    first = run_cli("migrate", "--schema", empty_schema, env={"DATABASE_URL": dsn})
    second = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema)

    assert first.returncode == 0, first.stderr
    assert "applied 1" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout


def test_migrate_down_rolls_back(dsn: str, empty_schema: str) -> None:
    assert run_cli("migrate", "--dsn", dsn, "--schema", empty_schema).returncode == 0
    down = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema, "--down", "--to", "0")
    assert down.returncode == 0, down.stderr
    assert "rolled back" in down.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def test_unreachable_server_is_one_line() -> None:
    result = run_cli("migrate", "--dsn", f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres")
    assert_one_line_error(result, "cannot reach the database")


def test_bad_dsn_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate", "--dsn", "this is not a dsn"), "pgqueue:")


def test_missing_dsn_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate"), "DATABASE_URL")


def test_bad_flag_is_one_line() -> None:
    assert_one_line_error(run_cli("migrate", "--frobnicate"), "unrecognized arguments")
    assert_one_line_error(run_cli("migrate", "--schema", "x" * 80), "at most 63 bytes")


def test_foreign_jobs_table_is_one_line(dsn: str, empty_schema: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty_schema)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(empty_schema, "jobs")))
    conn.commit()
    assert_one_line_error(run_cli("migrate", "--dsn", dsn, "--schema", empty_schema), "did not create")


@pytest.mark.parametrize("password", ["s3cr3t-pa55"])
def test_errors_never_echo_the_password(password: str) -> None:
    result = run_cli(
        "migrate", "--dsn", f"postgresql://postgres:{password}@127.0.0.1:{closed_port()}/postgres"
    )
    assert password not in result.stderr


# -- start: bad configuration fails before anything runs ----------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--queues", "default:x"], "queues must look like default:10,media:5; got 'default:x'"),
        (["--queues", "default:0"], "limit must be an integer 1..10000, got 0"),
        (
            ["--queues", "default:10", "--workers", "no such"],
            "module paths like myapp.workers; got 'no such'",
        ),
        (["--queues", "default:10", "--shutdown-grace", "soon"], "expected a number of seconds, got 'soon'"),
    ],
)
def test_start_with_a_bad_flag_is_a_usage_error_on_one_line(
    dsn: str, schema: str, flags: list[str], fragment: str
) -> None:
    result = run_cli("start", "--dsn", dsn, "--schema", schema, *flags)

    assert result.returncode == 2
    assert_one_line_error(result, fragment)


def test_start_with_a_worker_module_that_does_not_exist_fails_on_one_line(dsn: str, schema: str) -> None:
    result = run_cli(
        "start",
        "--dsn",
        dsn,
        "--schema",
        schema,
        "--queues",
        "default:1",
        "--workers",
        "no_such_workers_here",
    )

    assert_one_line_error(result, "can't import worker module 'no_such_workers_here'")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("raise RuntimeError('broken on purpose')\n", "RuntimeError: broken on purpose"),
        ("def perform(:\n", "SyntaxError"),
    ],
)
def test_start_with_a_worker_module_that_fails_while_importing_fails_on_one_line(
    dsn: str, schema: str, tmp_path: Path, source: str, error: str
) -> None:
    # Given a worker module whose own code fails when it is imported
    (tmp_path / "broken_workers.py").write_text(source)

    # When a node is started with it
    result = run_cli(
        "start",
        "--dsn",
        dsn,
        "--schema",
        schema,
        "--queues",
        "default:1",
        "--workers",
        "broken_workers",
        env={"PYTHONPATH": str(tmp_path)},
    )

    # Then it refuses with one line that names the module and the error, and no traceback
    assert_one_line_error(result, "can't import worker module 'broken_workers'")
    assert error in result.stderr


# -- status, retry, cancel, prune ---------------------------------------------------------------------


def jobs_by_queue_and_state(conn: psycopg.Connection[Any], schema: str) -> dict[tuple[str, str], int]:
    query = sql.SQL("SELECT queue, state::text, count(*) FROM {} GROUP BY 1, 2").format(
        sql.Identifier(schema, "jobs")
    )
    rows = conn.execute(query).fetchall()
    conn.commit()
    return {(queue, state): count for queue, state, count in rows}


def insert_jobs(conn: psycopg.Connection[Any], schema: str, queue: str, count: int) -> list[int]:
    jobs = pgqueue.insert_all(conn, [Record.new({}, queue=queue) for _ in range(count)], schema=schema)
    conn.commit()
    return [job.id for job in jobs]


def finish(conn: psycopg.Connection[Any], schema: str, ids: list[int], state: str) -> None:
    """Put jobs in a final state as the completer would (with its timestamp)."""
    stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "discarded": "discarded_at"}[state]
    conn.execute(
        sql.SQL("UPDATE {} SET state = %s::text::{}, attempt = 1, {} = now() WHERE id = ANY(%s)").format(
            sql.Identifier(schema, "jobs"), sql.Identifier(schema, "job_state"), sql.Identifier(stamp)
        ),
        (state, ids),
    )
    conn.commit()


def test_status_lists_jobs_per_queue_and_state_live_producers_and_the_leader(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given jobs in two queues, a live producer, one silent for an hour, and a leader
    insert_jobs(conn, schema, "alpha", 3)
    finish(conn, schema, insert_jobs(conn, schema, "alpha", 2), "completed")
    insert_jobs(conn, schema, "beta", 1)
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (uuid, node, queue, meta, updated_at)"
                " VALUES (gen_random_uuid(), %s, %s, %s, now() - make_interval(secs => %s))"
            ).format(sql.Identifier(schema, "pgqueue_producers")),
            [
                ("node-live", "alpha", Jsonb({"limit": 7, "paused": False, "running": 2}), 0),
                ("node-gone", "beta", Jsonb({}), 3600),
            ],
        )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (name, node, expires_at) VALUES (%s, %s, now() + interval '1 minute')"
        ).format(sql.Identifier(schema, "pgqueue_leaders")),
        ("pgqueue", "node-live"),
    )
    conn.commit()

    # When the status is asked for
    result = run_cli("status", "--dsn", dsn, "--schema", schema)

    # Then it shows the counts, the live producer only, and the leader
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert "leader: node-live" in result.stdout.splitlines()[0]
    assert ["alpha", "available", "3"] in lines
    assert ["alpha", "completed", "2"] in lines
    assert ["beta", "available", "1"] in lines
    live = [line for line in lines if "node-live" in line and "alpha" in line]
    assert len(live) == 1
    assert {"limit=7", "paused=False", "running=2"} <= set(live[0])
    assert "node-gone" not in result.stdout


def test_status_of_an_empty_queue_says_there_is_nothing(dsn: str, schema: str) -> None:
    result = run_cli("status", "--dsn", dsn, "--schema", schema)

    assert result.returncode == 0, result.stderr
    assert "leader: none" in result.stdout
    assert result.stdout.count("(none)") == 2


def test_retry_by_id_makes_only_that_job_available_again(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given two discarded jobs
    first, second = insert_jobs(conn, schema, "alpha", 2)
    finish(conn, schema, [first, second], "discarded")

    # When one of them is retried by id
    result = run_cli("retry", "--dsn", dsn, "--schema", schema, "--id", str(first))

    # Then the command says one job changed, and exactly that one did
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "retried 1 job"
    assert jobs_by_queue_and_state(conn, schema) == {("alpha", "available"): 1, ("alpha", "discarded"): 1}
    state = conn.execute(
        sql.SQL("SELECT state::text FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")), (first,)
    ).fetchone()
    assert state == ("available",)


def test_cancel_by_queue_cancels_the_unfinished_jobs_of_that_queue_only(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given three waiting jobs and one completed job in alpha, and two waiting in beta
    insert_jobs(conn, schema, "alpha", 3)
    finish(conn, schema, insert_jobs(conn, schema, "alpha", 1), "completed")
    insert_jobs(conn, schema, "beta", 2)

    # When alpha is cancelled
    result = run_cli("cancel", "--dsn", dsn, "--schema", schema, "--queue", "alpha")

    # Then the three unfinished alpha jobs are cancelled, and nothing else changed
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cancelled 3 jobs"
    assert jobs_by_queue_and_state(conn, schema) == {
        ("alpha", "cancelled"): 3,
        ("alpha", "completed"): 1,
        ("beta", "available"): 2,
    }


def test_retry_or_cancel_without_a_selection_refuses_on_one_line(dsn: str, schema: str) -> None:
    for command in ("retry", "cancel"):
        result = run_cli(command, "--dsn", dsn, "--schema", schema)
        assert result.returncode == 2
        assert_one_line_error(result, "say which jobs")


def test_prune_deletes_only_finished_jobs_older_than_max_age(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given two completed, one cancelled, one discarded and one waiting job
    finish(conn, schema, insert_jobs(conn, schema, "alpha", 2), "completed")
    finish(conn, schema, insert_jobs(conn, schema, "alpha", 1), "cancelled")
    finish(conn, schema, insert_jobs(conn, schema, "alpha", 1), "discarded")
    insert_jobs(conn, schema, "alpha", 1)

    # When pruning jobs older than an hour, then older than nothing at all
    kept = run_cli("prune", "--dsn", dsn, "--schema", schema, "--max-age", "3600")
    pruned = run_cli("prune", "--dsn", dsn, "--schema", schema, "--max-age", "0")

    # Then the first deletes nothing, and the second every finished job but not the waiting one
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip() == "pruned 0 finished jobs older than 3600 s"
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip() == "pruned 4 finished jobs older than 0 s"
    assert jobs_by_queue_and_state(conn, schema) == {("alpha", "available"): 1}


# -- hostile input: secrets, ranges, names --------------------------------------------------------------

MALFORMED_DSNS = [
    "postgresql://app:S3cret PW@127.0.0.1:5432/db",
    "host=127.0.0.1 password=S3cret PW dbname=db",
    "postgresql://app:S3cret%PW@127.0.0.1/db",
    "postgresql://app:S3cretPW@[::1/db",
]


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
@pytest.mark.parametrize("command", [["status"], ["migrate"], ["start", "--queues", "default:1"]])
def test_a_malformed_dsn_is_one_line_that_never_shows_its_password(command: list[str], dsn: str) -> None:
    given = run_cli(*command, "--dsn", dsn)
    from_env = run_cli(*command, env={"DATABASE_URL": dsn})

    for result in (given, from_env):
        assert_one_line_error(result, "the DSN is malformed")
        assert "S3cret" not in result.stderr


def test_a_password_libpq_repeats_is_masked_wherever_it_appears(dsn: str) -> None:
    # A well-formed DSN whose database does not exist: the server's message names the database,
    # which here is the password too, so it must be masked wherever it appears.
    secret = "pgq-secret-db-name"
    bad = psycopg.conninfo.make_conninfo(dsn, password=secret, dbname=secret)
    result = run_cli("status", "--dsn", bad)
    assert result.returncode == 1
    assert secret not in result.stderr
    assert "***" in result.stderr


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--heartbeat-interval", "0"], "from more than 0 to 1e+10, got '0'"),
        (["--heartbeat-interval", "30", "--rescue-window", "5"], "at most --rescue-window / 3"),
        (["--rescue-window", "1e300"], "got '1e300'"),
        (["--rescue-window", "0"], "got '0'"),
        (["--shutdown-grace", "-1"], "from 0 to 1e+10, got '-1'"),
        (["--prune-after", "inf"], "got 'inf'"),
    ],
)
def test_start_refuses_timings_out_of_range_on_one_line(
    dsn: str, schema: str, flags: list[str], fragment: str
) -> None:
    result = run_cli("start", "--dsn", dsn, "--schema", schema, "--queues", "default:1", *flags)
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("limit", ["0", "-5", "ten"])
def test_prune_refuses_a_limit_below_one(dsn: str, schema: str, limit: str) -> None:
    result = run_cli("prune", "--dsn", dsn, "--schema", schema, "--limit", limit, "--all")
    assert result.returncode == 2
    assert_one_line_error(result, f"expected a whole number of at least 1, got {limit!r}")


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_a_schema_name_with_a_percent_sign_is_refused(dsn: str, command: str) -> None:
    result = run_cli(command, "--dsn", dsn, "--schema", "pct%schema")
    assert result.returncode == 2
    assert_one_line_error(result, "schema must not contain a % character, got 'pct%schema'")


def test_migrate_down_takes_queue_control_away_and_back(
    dsn: str, empty_schema: str, conn: psycopg.Connection[Any]
) -> None:
    def has_signals() -> bool:
        name = sql.Identifier(empty_schema, "pgqueue_signals").as_string(None)
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        conn.commit()
        return bool(found and found[0])

    assert run_cli("migrate", "--dsn", dsn, "--schema", empty_schema).returncode == 0
    assert has_signals()
    down = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema, "--down", "--to", "1")
    assert down.returncode == 0, down.stderr
    newest = m.PGQUEUE.latest
    assert f"reverted {', '.join(str(v) for v in range(newest, 1, -1))}" in down.stdout
    assert not has_signals()
    up = run_cli("migrate", "--dsn", dsn, "--schema", empty_schema)
    assert f"applied {', '.join(str(v) for v in range(2, newest + 1))}" in up.stdout
    assert has_signals()
