"""What the ``python -m pgqueue`` commands share: usage errors, the database flags, connecting."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
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


def flag(value: str) -> bool:
    """An argparse type for ``true|false`` (also yes/no, on/off, 1/0)."""
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


Handler = Callable[[argparse.Namespace], int]


def add_crud_commands(
    commands: Any,
    name: str,
    *,
    help: str,
    helps: dict[str, str],
    handlers: dict[str, Handler],
    add_fields: Callable[..., None],
) -> None:
    """``name list|add|update|delete``: the shape ``queues`` and ``cron`` share.

    ``helps`` and ``handlers`` are keyed by action; ``add_fields(parser, adding=...)`` adds the
    fields ``add`` (``adding=True``) and ``update`` take.
    """
    group = commands.add_parser(name, help=help)
    actions = group.add_subparsers(dest="action", required=True, parser_class=type(group))
    for action in ("list", "add", "update", "delete"):
        command = actions.add_parser(action, help=helps[action])
        add_database(command)
        if action == "list":
            command.add_argument("--json", action="store_true", help="one JSON array")
        elif action == "delete":
            command.add_argument("name", help=f"the {helps['noun']}'s name")
        else:
            add_fields(command, adding=action == "add")
        command.set_defaults(handler=handlers[action])
