"""``python -m pgqueue queues list|add|update|delete``: the queues declared in the database.

Bad values (a limit of 0, a rate period of 0 …) are usage errors (exit 2) naming the flag; an
unknown queue is an error (exit 1). Each change reaches running nodes when it commits.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .cli_support import UsageError, add_crud_commands, connect, flag
from .errors import ConfigError
from .queues import QueueInfo, add_queue, delete_queue, list_queues, update_queue

__all__ = ["add_queue_commands", "flag"]

_NONE = "none"


def _limit(value: str) -> int | None:
    """A whole number of at least 1, or ``none`` (no such limit)."""
    if value.strip().lower() == _NONE:
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of at least 1 or 'none', got {value!r}"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return number


def _period(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, got {value!r}")
    return number


def _describe(info: QueueInfo) -> str:
    config = info.config
    parts = [f"limit={config.limit}"]
    if config.global_limit is not None:
        parts.append(f"global_limit={config.global_limit}")
    if config.rate_limit is not None:
        parts.append(f"rate_limit={config.rate_limit}/{config.rate_period:g}s")
    if config.partitioned:
        parts.append("partitioned")
    if config.paused:
        parts.append("paused")
    return f"{info.name:<24} {' '.join(parts)}"


def _options(args: argparse.Namespace, *, adding: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    names = ("limit", "global_limit", "rate_limit", "rate_period", "partitioned", "paused")
    for name in names:
        value = getattr(args, name, argparse.SUPPRESS)
        if value is not argparse.SUPPRESS:
            options[name] = value
    if adding and options.get("limit") is None:
        raise UsageError("queues add needs --limit N")
    if not adding and not options:
        raise UsageError(
            "say what to change: --limit, --global-limit, --rate-limit, --rate-period, --paused …"
        )
    return options


def _as_usage(exc: ConfigError) -> UsageError:
    # The API names the field (global_limit); the user typed the flag (--global-limit).
    text = str(exc)
    for name in ("global_limit", "rate_limit", "rate_period"):
        text = text.replace(f": {name} ", f": --{name.replace('_', '-')} ")
    return UsageError(text.replace(": limit ", ": --limit "))


def _cmd_list(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        queues = list_queues(conn, schema=args.schema)
    if args.json:
        print(json.dumps([info.as_dict() for info in queues]))
    elif not queues:
        print("no queues declared")
    for info in queues if not args.json else []:
        print(_describe(info))
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    options = _options(args, adding=True)
    with connect(args.dsn) as conn:
        try:
            info = add_queue(conn, args.name, schema=args.schema, **options)
        except ConfigError as exc:
            if "exists already" in str(exc):
                raise
            raise _as_usage(exc) from None
        conn.commit()
    print(f"added {_describe(info)}")
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    options = _options(args, adding=False)
    with connect(args.dsn) as conn:
        try:
            info = update_queue(conn, args.name, schema=args.schema, **options)
        except ConfigError as exc:
            raise _as_usage(exc) from None
        conn.commit()
    print(f"updated {_describe(info)}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with connect(args.dsn) as conn:
        delete_queue(conn, args.name, schema=args.schema)
        conn.commit()
    print(f"deleted queue {args.name!r} (its jobs stay)")
    return 0


def _add_settings(command: argparse.ArgumentParser, *, adding: bool) -> None:
    suppress = argparse.SUPPRESS
    command.add_argument("name", help="the queue's name")
    command.add_argument("--limit", type=_limit, default=suppress, help="jobs at once on each node")
    command.add_argument(
        "--global-limit",
        type=_limit,
        default=suppress,
        help="jobs at once across all nodes ('none': no limit)",
    )
    command.add_argument(
        "--rate-limit",
        type=_limit,
        default=suppress,
        help="jobs (weighted) started per period ('none': no limit)",
    )
    command.add_argument("--rate-period", type=_period, default=suppress, metavar="SECONDS", help="default 1")
    if adding:
        command.add_argument(
            "--partitioned", action="store_true", default=suppress, help="limits per partition key"
        )
        command.add_argument("--paused", action="store_true", default=suppress, help="declare it paused")
    else:
        command.add_argument("--partitioned", type=flag, default=suppress, metavar="true|false")
        command.add_argument("--paused", type=flag, default=suppress, metavar="true|false")


def add_queue_commands(commands: Any) -> None:
    """Add ``queues`` and its subcommands to the CLI's subparsers."""
    add_crud_commands(
        commands,
        "queues",
        help="queues declared in the database: list, add, update, delete",
        helps={
            "noun": "queue",
            "list": "the declared queues and their limits",
            "add": "declare a queue",
            "update": "change a declared queue (running nodes follow)",
            "delete": "forget a declared queue",
        },
        handlers={"list": _cmd_list, "add": _cmd_add, "update": _cmd_update, "delete": _cmd_delete},
        add_fields=_add_settings,
    )
