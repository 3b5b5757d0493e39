"""The ``python -m pgqueue`` command line.

Every failure the user can cause (an unreachable server, a bad DSN, a foreign ``jobs`` table,
an invalid flag) ends as one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from . import __version__
from .errors import PgQueueError
from .migrate import PGQUEUE, migrate, rollback, validate_schema_name

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage dump
        raise _UsageError(message)


def _schema(value: str) -> str:
    try:
        return validate_schema_name(value)
    except PgQueueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connect(dsn: str | None) -> psycopg.Connection[Any]:
    dsn = dsn or os.environ.get("DATABASE_URL")
    if not dsn:
        raise _UsageError("no database given: pass --dsn or set DATABASE_URL")
    return psycopg.connect(dsn, connect_timeout=10)


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"pgqueue {__version__} (schema version {PGQUEUE.latest})")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        if args.down:
            result = rollback(conn, args.schema, to_version=args.to)
            if result.reverted:
                done = ", ".join(str(v) for v in result.reverted)
                print(f"rolled back schema {args.schema!r} to version {result.version} (reverted {done})")
            else:
                print(f"nothing to roll back in schema {args.schema!r} (version {result.version})")
        else:
            result = migrate(conn, args.schema, to_version=args.to)
            if result.applied:
                done = ", ".join(str(v) for v in result.applied)
                print(f"migrated schema {args.schema!r} to version {result.version} (applied {done})")
            else:
                print(f"schema {args.schema!r} is already at version {result.version}; nothing to do")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pgqueue", description="A PostgreSQL-native job queue.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    version = commands.add_parser("version", help="print the installed and schema versions")
    version.set_defaults(handler=_cmd_version)

    mig = commands.add_parser("migrate", help="create or upgrade the queue's tables (or roll them back)")
    mig.add_argument("--dsn", help="PostgreSQL connection string (default: $DATABASE_URL)")
    mig.add_argument("--schema", type=_schema, default="public", help="schema to migrate (default: public)")
    mig.add_argument("--down", action="store_true", help="roll back instead (one version, or to --to)")
    mig.add_argument("--to", type=int, default=None, metavar="VERSION", help="target version")
    mig.set_defaults(handler=_cmd_migrate)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args))
    except _UsageError as exc:
        print(f"pgqueue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.OperationalError as exc:
        print(f"pgqueue: cannot reach the database: {_first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.ProgrammingError as exc:
        print(f"pgqueue: {_first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except (PgQueueError, psycopg.Error) as exc:
        print(f"pgqueue: {_first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
