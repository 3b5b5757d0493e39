"""Fixtures of the flow-control tests: node processes and the marks table their workers write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgqueue import migrate as migrations
from tests.flow.workers import DSN_VARIABLE, MARKS_DDL, SCHEMA_VARIABLE

REPOSITORY = Path(__file__).resolve().parents[2]

Launch = Callable[[str, dict[str, Any]], subprocess.Popen[bytes]]


@pytest.fixture
def components() -> list[migrations.MigrationSet]:
    """Flow control is the queue's: its tables only."""
    return [migrations.PGQUEUE]


@pytest.fixture
def marks(dsn: str, schema: str) -> str:
    """The schema, with its ``flow_marks`` table created."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(MARKS_DDL)
    return schema


@pytest.fixture
def launch(dsn: str, marks: str, tmp_path: Path) -> Iterator[Launch]:
    """Start node processes running the ``limited`` queue; all are stopped when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            DSN_VARIABLE: dsn,
            SCHEMA_VARIABLE: marks,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        }
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.flow.node", name, json.dumps(config)],
            cwd=REPOSITORY,
            env=env,
            stderr=log,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def db(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection: what it inserts is visible to the node at once."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection
