"""``python -m pgqueue cron list|add|update|delete``: cron entries declared in the database.

A malformed expression, time zone or args is a usage error (exit 2) naming the field; an unknown
entry is an error (exit 1). The leader's cron plugin reads the table every minute.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import orjson

from .cli_support import UsageError, add_crud_commands, connect, flag
from .cron_entries import CronRow, add_cron, delete_cron, list_crons, update_cron
from .errors import ConfigError

__all__ = ["add_cron_commands"]

_OPTIONS = ("expression", "timezone", "worker", "args", "queue", "priority", "max_attempts", "enabled")


def _args(value: str) -> dict[str, Any]:
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}") from None
    if not isinstance(decoded, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return decoded


def _describe(entry: CronRow) -> str:
    extra = "".join(f" {k}={v}" for k, v in entry.options().items())
    state = "" if entry.enabled else " (disabled)"
    args = json.dumps(entry.args, sort_keys=True)
    return f"{entry.name:<24} {entry.expression!r} {entry.timezone} {entry.worker} {args}{extra}{state}"


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _OPTIONS if hasattr(args, name)}


def _cmd_list(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        entries = list_crons(conn, schema=args.schema)
    if args.json:
        print(json.dumps([{"name": e.name, **{k: getattr(e, k) for k in _OPTIONS}} for e in entries]))
        return 0
    if not entries:
        print("no cron entries declared")
    for entry in entries:
        print(_describe(entry))
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    options = _changes(args)
    expression, worker = options.pop("expression"), options.pop("worker")
    with connect(args.dsn) as conn:
        try:
            entry = add_cron(conn, args.name, expression, worker, schema=args.schema, **options)
        except ConfigError as exc:
            if "exists already" in str(exc):
                raise
            raise UsageError(str(exc)) from None
        conn.commit()
    print(f"added {_describe(entry)}")
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    changes = _changes(args)
    if not changes:
        raise UsageError("say what to change: --expression, --timezone, --worker, --args, --enabled …")
    with connect(args.dsn) as conn:
        try:
            entry = update_cron(conn, args.name, schema=args.schema, **changes)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        conn.commit()
    print(f"updated {_describe(entry)}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        delete_cron(conn, args.name, schema=args.schema)
        conn.commit()
    print(f"deleted cron entry {args.name!r} (the jobs it inserted stay)")
    return 0


def _add_fields(command: argparse.ArgumentParser, *, adding: bool) -> None:
    suppress = argparse.SUPPRESS
    command.add_argument("name", help="the entry's name (its identity: one job per minute per name)")
    command.add_argument("--expression", required=adding, default=suppress, help="'*/5 * * * *' or @daily …")
    command.add_argument("--worker", required=adding, default=suppress, help="the worker's registry name")
    command.add_argument("--args", type=_args, default=suppress, help="the job's args as a JSON object")
    command.add_argument("--timezone", default=suppress, help="an IANA zone (default Etc/UTC)")
    command.add_argument("--queue", default=suppress, help="a queue other than the worker's")
    command.add_argument("--priority", type=int, default=suppress, help="a priority other than the worker's")
    command.add_argument("--max-attempts", type=int, default=suppress, help="other than the worker's")
    command.add_argument("--enabled", type=flag, default=suppress, metavar="true|false")


def add_cron_commands(commands: Any) -> None:
    """Add ``cron`` and its subcommands to the CLI's subparsers."""
    add_crud_commands(
        commands,
        "cron",
        help="cron entries declared in the database: list, add, update, delete",
        helps={
            "noun": "entry",
            "list": "the declared cron entries",
            "add": "declare a cron entry",
            "update": "change a declared cron entry",
            "delete": "forget a declared cron entry",
        },
        handlers={"list": _cmd_list, "add": _cmd_add, "update": _cmd_update, "delete": _cmd_delete},
        add_fields=_add_fields,
    )
