"""The ``python -m chimeway`` command line: ``migrate``, ``explain <delivery_id>``, ``trace <event_id>``.

The database comes from ``--dsn``, else ``DATABASE_URL``, else ``database_url`` in the config file
(``--config`` or ``$CHIMEWAY_CONFIG``); the schema from ``--schema``, else the config file, else
``public``. As with ``python -m pgqueue``, every failure the user can cause ends as one line on
stderr and a non-zero exit, never a traceback: 2 for a usage or configuration mistake, 1 for
anything else (an unreachable database, an unknown id).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from pgqueue.lifecycle import describe_error
from pgqueue.migrate import validate_schema_name

from .config import ConfigError, Settings, load_settings
from .errors import ChimewayError, InvalidValue
from .event_trace import MAX_TRACE_NOTIFICATIONS, EventTrace, load_event_trace
from .explain import Explanation, explain_delivery
from .migrations import migrate_all

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage dump
        raise ConfigError(message)


def _one_line(text: str) -> str:
    # A flag, a path or an error may carry a newline (argparse echoes arguments raw).
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_TRACE_NOTIFICATIONS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_TRACE_NOTIFICATIONS}, got {value!r}"
        )
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m chimeway", description="Chimeway's tables and delivery stories.")
    common = _Parser(add_help=False)
    common.add_argument("--dsn", help="the database (default: $DATABASE_URL, then the config file)")
    common.add_argument(
        "--schema", help="where chimeway's tables live (default: the config file's, or public)"
    )
    common.add_argument("--config", help="a chimeway.toml file (default: $CHIMEWAY_CONFIG, if set)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser(
        "migrate", parents=[common], help="create or upgrade pgqueue's and chimeway's tables, nothing else"
    )
    explain = commands.add_parser("explain", parents=[common], help="tell one delivery's story")
    explain.add_argument("delivery_id")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    trace = commands.add_parser(
        "trace", parents=[common], help="an event's notifications, deliveries, attempts"
    )
    trace.add_argument("event_id")
    trace.add_argument("--limit", type=_limit, default=100, help="notifications shown at most (default 100)")
    trace.add_argument("--json", action="store_true", help="print the trace as JSON")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    if args.dsn:
        env["DATABASE_URL"] = args.dsn
    settings = load_settings(args.config, env)
    if args.schema is not None:
        try:
            validate_schema_name(args.schema)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = replace(settings, schema=args.schema)
    return settings


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        for status in migrate_all(conn, settings.schema):
            applied = ", ".join(str(v) for v in status.applied)
            done = f"applied {applied}" if applied else "nothing to do"
            print(f"{status.component}: schema {settings.schema!r} at version {status.version} ({done})")
    return 0


def _cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    dsn = settings.database_url
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, connect_timeout=10),
        poolclass=NullPool,
        hide_parameters=True,
    ).execution_options(schema_translate_map={None: settings.schema})
    try:
        with Session(engine) as session:
            story = explain_delivery(session, args.delivery_id)
    except DBAPIError as exc:  # SQLAlchemy's wrapper; report the driver's own error, as the others
        raise exc.orig if isinstance(exc.orig, Exception) else exc from None
    finally:
        engine.dispose()
    print(json.dumps(_jsonable(story), indent=2) if args.json else _explanation_text(story))
    return 0


def _cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        trace = load_event_trace(conn, args.event_id, schema=settings.schema, limit=args.limit)
    print(json.dumps(_jsonable(trace), indent=2) if args.json else _trace_text(trace))
    return 0


def _jsonable(value: Explanation | EventTrace) -> Any:
    return json.loads(json.dumps(asdict(value), default=str))


def _explanation_text(story: Explanation) -> str:
    lines = [
        f"delivery {story.delivery_id}: {story.status}"
        + (f" / {story.suppression_reason}" if story.suppression_reason else ""),
        f"  {story.why}",
        f"  event {story.event_id} ({story.notification_key})"
        + (f", correlation id {story.correlation_id}" if story.correlation_id else ""),
        f"  notification {story.notification_id} for {story.recipient} on channel {story.channel}",
    ]
    if story.render_key is not None:
        lines.append(f"  rendered with template {story.render_key} v{story.render_version}")
    if story.journey is not None:
        run = story.journey
        lines.append(
            f"  journey run {run.run_id}, step {run.step}: run {run.state}"
            + (f" / {run.terminal_reason}" if run.terminal_reason else "")
            + f", outcomes {dict(run.outcomes)}"
        )
    lines.append("timeline:")
    for entry in story.timeline:
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items() if v is not None)
        lines.append(f"  {entry.at.isoformat()}  {entry.event}" + (f"  ({detail})" if detail else ""))
    return "\n".join(lines)


def _trace_text(trace: EventTrace) -> str:
    lines = [
        f"event {trace.event_id} ({trace.notification_key}) at {trace.inserted_at.isoformat()}"
        + (f", correlation id {trace.correlation_id}" if trace.correlation_id else "")
    ]
    if not trace.notifications:
        lines.append("  no notifications")
    for notification in trace.notifications:
        read = f", read {notification.read_at.isoformat()}" if notification.read_at else ""
        lines.append(f"  notification {notification.notification_id} for {notification.recipient}{read}")
        for delivery in notification.deliveries:
            reason = f" / {delivery.suppression_reason}" if delivery.suppression_reason else ""
            lines.append(
                f"    {delivery.channel}: {delivery.status}{reason}  (delivery {delivery.delivery_id})"
            )
            for attempt in delivery.attempts:
                extra = f" {attempt.error_class}" if attempt.error_class else ""
                message = f" message {attempt.provider_message_id}" if attempt.provider_message_id else ""
                lines.append(
                    f"      attempt {attempt.number}: {attempt.outcome}{extra} via {attempt.adapter}{message}"
                    f" at {attempt.at.isoformat()}"
                )
    if trace.truncated:
        lines.append(f"  … more notifications than the {len(trace.notifications)} shown (--limit)")
    return "\n".join(lines)


_COMMANDS = {"migrate": _cmd_migrate, "explain": _cmd_explain, "trace": _cmd_trace}


def main(argv: Sequence[str] | None = None) -> int:
    dsn: str | None = None
    settings: Settings | None = None
    try:
        args = build_parser().parse_args(argv)
        settings = _settings(args)
        dsn = settings.database_url
        return _COMMANDS[args.command](settings, args)
    except (ConfigError, InvalidValue) as exc:  # a bad flag, setting or id
        print(f"chimeway: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except psycopg.errors.UndefinedTable:
        schema = settings.schema if settings is not None else "public"
        print(
            f"chimeway: schema {schema!r} has no chimeway tables; run: python -m chimeway migrate",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except psycopg.OperationalError as exc:
        print(f"chimeway: cannot reach the database: {_one_line(describe_error(exc, dsn))}", file=sys.stderr)
        return EXIT_ERROR
    except ChimewayError as exc:  # an unknown id, a malformed one: the message says which
        print(f"chimeway: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        print(f"chimeway: {_one_line(describe_error(exc, dsn))}", file=sys.stderr)
        return EXIT_ERROR
