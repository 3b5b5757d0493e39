"""pgqueue in a real Django project (tests/django_project) on PostgreSQL, driven by manage.py.

``migrate`` installs the tables; an order and its job are written in one ``transaction.atomic``
(an exception rolls both back); ``pgqueue_worker`` runs the job, which uses the ORM; SIGTERM stops
it cleanly. A project on SQLite is refused when Django starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import django
import psycopg
import pytest
from psycopg import sql

from tests.helpers import wait_until

REPOSITORY = Path(__file__).resolve().parents[2]
MANAGE = REPOSITORY / "tests" / "django_project" / "manage.py"


class Project:
    """manage.py of the test project, on one schema."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.env = {
            **os.environ,
            "PGQUEUE_TEST_DSN": dsn,
            "PGQUEUE_TEST_SCHEMA": schema,
            "PYTHONPATH": str(REPOSITORY),
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(MANAGE), *args],
            cwd=REPOSITORY,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def query(
        self, statement: str, *tables: str, params: tuple[object, ...] = ()
    ) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn) as conn:
            composed = sql.SQL(statement).format(*(sql.Identifier(self.schema, t) for t in tables))
            return list(conn.execute(composed, params))

    def place_order(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.run("place_order", "ada@example.com", *flags)


@pytest.fixture
def project(dsn: str, empty_schema: str) -> Project:
    # Django's own tables go where the search_path points: the schema must exist first.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(empty_schema)))
    made = Project(dsn, empty_schema)
    migrated = made.run("migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr
    assert "Applying pgqueue.0001_initial... OK" in migrated.stdout
    assert "Applying pgqueue.0002_dashboard... OK" in migrated.stdout
    return made


@pytest.fixture
def worker(project: Project) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, str(MANAGE), "pgqueue_worker"],
        cwd=REPOSITORY,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(10)


def receipt_sent(project: Project, order_id: int) -> bool:
    rows = project.query(
        "SELECT receipt_sent FROM {} WHERE id = %s".replace("%s", str(order_id)), "shop_order"
    )
    return bool(rows and rows[0][0])


@pytest.mark.system
def test_migrate_installs_the_tables_and_a_job_joins_transaction_atomic(
    project: Project, worker: subprocess.Popen[str]
) -> None:
    assert project.query("SELECT count(*) FROM {}", "jobs") == [(0,)]
    again = project.run("migrate", "--no-input")
    assert again.returncode == 0
    assert "No migrations to apply" in again.stdout

    refused = project.place_order("--fail")
    assert refused.returncode == 1
    assert "order refused" in refused.stderr
    assert project.query("SELECT count(*) FROM {}", "jobs") == [(0,)]
    assert project.query("SELECT count(*) FROM {}", "shop_order") == [(0,)]

    placed = project.place_order()
    assert placed.returncode == 0, placed.stderr
    match = re.search(r"order (\d+) job (\d+)", placed.stdout)
    assert match
    order_id, job_id = int(match.group(1)), int(match.group(2))
    assert project.query("SELECT id, worker FROM {}", "jobs") == [(job_id, "shop.SendReceipt")]

    wait_until(lambda: receipt_sent(project, order_id), timeout=30, message="the worker did not run the job")
    wait_until(
        lambda: project.query("SELECT state::text FROM {}", "jobs") == [("completed",)],
        timeout=10,
        message="the job was not acked",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    output = worker.stdout.read() if worker.stdout else ""
    assert "pgqueue: running ['default', 'emails']" in output
    assert "pgqueue: stopped" in output


@pytest.mark.system
def test_a_database_that_is_not_postgresql_is_refused_at_startup(dsn: str, empty_schema: str) -> None:
    checked = Project(dsn, empty_schema).run("check", PGQUEUE_TEST_DJANGO_DB="sqlite")
    assert checked.returncode == 1
    assert (
        "pgqueue needs PostgreSQL: DATABASES['default'] uses django.db.backends.sqlite3 (sqlite)"
        in checked.stderr
    )


# django.tasks is Django 6, which needs Python 3.12: this test exists where it is installed (the
# interpreters `make test-all` runs). Not marked system, so that run (-m "not system") includes it.
if django.VERSION >= (6, 0):

    def test_a_django_task_enqueued_in_atomic_runs_on_the_worker(
        project: Project, worker: subprocess.Popen[str]
    ) -> None:
        refused = project.place_order("--task", "--fail")
        assert refused.returncode == 1
        assert project.query("SELECT count(*) FROM {}", "jobs") == [(0,)]
        placed = project.place_order("--task")
        assert placed.returncode == 0, placed.stderr
        match = re.search(r"order (\d+) job (\d+)", placed.stdout)
        assert match
        order_id = int(match.group(1))
        assert project.query("SELECT worker, queue FROM {}", "jobs") == [
            ("pgqueue.contrib.django.RunDjangoTask", "emails")
        ]
        wait_until(lambda: receipt_sent(project, order_id), timeout=30, message="the task did not run")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
