"""What the ``python -m pgqueue`` commands share: usage errors, the database flags, connecting."""

from __future__ import annotations

import argparse
import os
from typing import Any

import psycopg

from .errors import PgQueueError
from .migrate import validate_schema_name

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "Parser", "UsageError", "add_database", "connect", "dsn_from"]

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage dump
        raise UsageError(message)


def schema_name(value: str) -> str:
    try:
        return validate_schema_name(value)
    except PgQueueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def connect(dsn: str | None) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn_from(dsn), connect_timeout=10)


def dsn_from(value: str | None) -> str:
    dsn = value or os.environ.get("DATABASE_URL")
    if not dsn:
        raise UsageError("no database given: pass --dsn or set DATABASE_URL")
    return dsn


def add_database(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dsn", help="PostgreSQL connection string (default: $DATABASE_URL)")
    command.add_argument(
        "--schema", type=schema_name, default="public", help="the queue's schema (default: public)"
    )
