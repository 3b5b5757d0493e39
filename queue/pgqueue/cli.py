"""The ``python -m pgqueue`` command line.

Every failure the user can cause (an unreachable server, a bad DSN, a foreign ``jobs`` table,
an invalid flag) ends as one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from . import __version__
from .errors import ConfigError, PgQueueError
from .job import JobState
from .lifecycle import describe_error
from .manage import JobFilter, cancel_all_jobs, retry_all_jobs
from .migrate import PGQUEUE, migrate, rollback, validate_schema_name, verify_migrated
from .options import MAX_SECONDS
from .plugins import Plugin
from .plugins.lifeline import BEATS_PER_WINDOW, Lifeline
from .plugins.pruner import Pruner
from .plugins.stager import Stager
from .processes import MAX_PROCESSES, validate_processes
from .producer import QueueConfig
from .runtime import Runtime
from .store import queries_for
from .telemetry import JsonFormatter, attach_default_logger

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
    return psycopg.connect(_dsn(dsn), connect_timeout=10)


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


def _queues(value: str) -> dict[str, int]:
    """``default:10,media:5`` → {"default": 10, "media": 5}."""
    queues: dict[str, int] = {}
    for part in value.split(","):
        name, sep, limit = part.strip().partition(":")
        if not name or not sep or not limit.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"queues must look like default:10,media:5; got {part.strip()!r}"
            )
        try:
            QueueConfig.parse(name, int(limit))
        except (ValueError, PgQueueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        queues[name] = int(limit)
    return queues


def _modules(value: str) -> list[str]:
    modules = [m.strip() for m in value.split(",") if m.strip()]
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise argparse.ArgumentTypeError(
                f"workers must be module paths like myapp.workers; got {module!r}"
            )
    return modules


def _seconds(value: str, *, zero: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    low = "0" if zero else "more than 0"
    if not (number >= 0 if zero else number > 0) or not number <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds from {low} to {MAX_SECONDS:g}, got {value!r}"
        )
    return number


def _duration(value: str) -> float:
    """A number of seconds, 0 included (a grace period, an age)."""
    return _seconds(value, zero=True)


def _interval(value: str) -> float:
    """A number of seconds above 0 (an interval, a window)."""
    return _seconds(value, zero=False)


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _processes(value: str) -> int:
    try:
        return validate_processes(int(value))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"expected a whole number of worker processes 0..{MAX_PROCESSES}, got {value!r}"
        ) from None


def _configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg").setLevel(logging.WARNING)


def _cmd_start(args: argparse.Namespace) -> int:
    dsn = _dsn(args.dsn)
    _configure_logging(args.log_format, args.log_level)
    attach_default_logger()
    plugins: list[Plugin] = [Stager(), Lifeline(rescue_window=args.rescue_window)]
    if args.prune_after is not None:
        plugins.append(Pruner(max_age=args.prune_after))
    beat, window = args.heartbeat_interval, args.rescue_window
    if beat is not None and beat > window / BEATS_PER_WINDOW:
        raise _UsageError(
            f"--heartbeat-interval must be at most --rescue-window / {BEATS_PER_WINDOW} "
            f"({window / BEATS_PER_WINDOW:g}), got {beat:g}: a node "
            "beating less often has its own live jobs rescued"
        )
    if args.metrics_port is not None:
        from .metrics import registry, serve

        serve(registry(dsn, args.schema)[0], args.metrics_port, args.metrics_host)
    runtime = Runtime(
        dsn,
        direct_conninfo=args.direct_dsn or os.environ.get("DIRECT_DATABASE_URL") or None,
        queues=args.queues,
        workers=args.workers,
        schema=args.schema,
        node=args.node,
        plugins=plugins,
        shutdown_grace_period=args.shutdown_grace,
        heartbeat_interval=args.heartbeat_interval,
        synchronous_acks=args.synchronous_acks,
        processes=args.processes,
    )
    runtime.run()
    return 0


def _dsn(value: str | None) -> str:
    dsn = value or os.environ.get("DATABASE_URL")
    if not dsn:
        raise _UsageError("no database given: pass --dsn or set DATABASE_URL")
    return dsn


def _cmd_status(args: argparse.Namespace) -> int:
    queries = queries_for(args.schema)
    with _connect(args.dsn) as conn:
        verify_migrated(conn, args.schema)
        counts = conn.execute(queries.queue_counts).fetchall()
        producers = conn.execute(queries.producers_list, {"window": 60}).fetchall()
        leader = conn.execute(queries.leader_current, {"name": "pgqueue"}).fetchone()
    print(f"schema {args.schema!r}; leader: {leader[0] if leader else 'none'}")
    print("\njobs")
    if not counts:
        print("  (none)")
    for queue, state, count in counts:
        print(f"  {queue:<24} {state:<10} {count:>10}")
    print("\nproducers (heartbeat within 60 s)")
    if not producers:
        print("  (none)")
    for _uuid, node, queue, meta, _started, updated in producers:
        print(
            f"  {queue:<24} {node:<32} limit={meta.get('limit')} paused={meta.get('paused')} "
            f"running={meta.get('running')} last={updated:%H:%M:%S}"
        )
    return 0


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value!r}")
    return int(value)


def _cmd_web(args: argparse.Namespace) -> int:
    try:
        from .web.serve import serve
    except ImportError as exc:
        raise _UsageError(f"the dashboard needs the web extra (pip install 'chimeway[web]'): {exc}") from None
    token = args.token or os.environ.get("PGQUEUE_WEB_TOKEN") or None
    basic = args.basic_auth or os.environ.get("PGQUEUE_WEB_BASIC_AUTH") or None
    _configure_logging("text", args.log_level)
    serve(
        dsn=_dsn(args.dsn),
        schema=args.schema,
        host=args.host,
        port=args.port,
        token=token,
        basic_auth=basic,
        insecure_no_auth=args.insecure_no_auth,
        read_only=args.read_only,
        extensions=args.extension,
        log_level=args.log_level,
    )
    return 0


def _filter(args: argparse.Namespace) -> JobFilter:
    if not (args.id or args.queue or args.worker or args.state):
        raise _UsageError("say which jobs: --id, or a filter (--queue, --worker, --state)")
    return JobFilter(
        ids=args.id or None,
        queue=args.queue or None,
        worker=args.worker or None,
        state=args.state or None,
    )


def _cmd_retry(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        count = retry_all_jobs(conn, _filter(args), schema=args.schema)
    print(f"retried {count} job{'s' if count != 1 else ''}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        count = cancel_all_jobs(conn, _filter(args), schema=args.schema)
    print(f"cancelled {count} job{'s' if count != 1 else ''}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    queries = queries_for(args.schema)
    total = 0
    with _connect(args.dsn) as conn:
        while True:
            rows = conn.execute(queries.prune_jobs, {"max_age": args.max_age, "limit": args.limit}).fetchall()
            conn.commit()
            total += len(rows)
            if len(rows) < args.limit or not args.all:
                break
    print(f"pruned {total} finished job{'s' if total != 1 else ''} older than {args.max_age:g} s")
    return 0


def _add_selection(command: argparse.ArgumentParser) -> None:
    command.add_argument("--id", type=int, action="append", default=[], help="a job id (repeatable)")
    command.add_argument("--queue", action="append", default=[], help="jobs of this queue (repeatable)")
    command.add_argument("--worker", action="append", default=[], help="jobs of this worker (repeatable)")
    command.add_argument(
        "--state", action="append", default=[], choices=[s.value for s in JobState], help="jobs in this state"
    )


def _add_database(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dsn", help="PostgreSQL connection string (default: $DATABASE_URL)")
    command.add_argument(
        "--schema", type=_schema, default="public", help="the queue's schema (default: public)"
    )


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

    start = commands.add_parser("start", help="run queues on this node until SIGTERM/SIGINT")
    _add_database(start)
    start.add_argument("--queues", type=_queues, required=True, help="queues and limits: default:10,media:5")
    start.add_argument(
        "--workers", type=_modules, default=[], help="modules defining workers: myapp.workers,…"
    )
    start.add_argument(
        "--direct-dsn",
        default=None,
        help="behind a transaction pooler (PgBouncer): a connection string reaching PostgreSQL "
        "itself, for LISTEN (default: $DIRECT_DATABASE_URL, else --dsn)",
    )
    start.add_argument("--node", default=None, help="node name (default: host:pid)")
    start.add_argument(
        "--processes",
        type=_processes,
        default=0,
        metavar="N",
        help="run sync (CPU-bound) jobs in N worker processes instead of threads (default: 0, threads)",
    )
    start.add_argument("--shutdown-grace", type=_duration, default=15.0, metavar="SECONDS")
    start.add_argument(
        "--rescue-window",
        type=_interval,
        default=15.0,
        metavar="SECONDS",
        help="rescue a dead node's jobs after its heartbeats stop this long",
    )
    start.add_argument(
        "--heartbeat-interval",
        type=_interval,
        default=None,
        metavar="SECONDS",
        help="how often this node says it is alive (default: 2, or --rescue-window / 3 when less)",
    )
    start.add_argument(
        "--synchronous-acks",
        action="store_true",
        help="make every claim and ack wait for its WAL flush (fewer re-runs after a database crash)",
    )
    start.add_argument(
        "--prune-after",
        type=_interval,
        default=None,
        metavar="SECONDS",
        help="delete finished jobs older than this (default: keep them)",
    )
    start.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus metrics at :PORT/metrics"
    )
    start.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default: 127.0.0.1)"
    )
    start.add_argument("--log-format", choices=["text", "json"], default="text")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    start.set_defaults(handler=_cmd_start)

    status = commands.add_parser("status", help="jobs per queue and state, live producers, the leader")
    _add_database(status)
    status.set_defaults(handler=_cmd_status)

    retry = commands.add_parser("retry", help="make jobs available again (by id or filter)")
    _add_database(retry)
    _add_selection(retry)
    retry.set_defaults(handler=_cmd_retry)

    cancel = commands.add_parser("cancel", help="cancel unfinished jobs (by id or filter)")
    _add_database(cancel)
    _add_selection(cancel)
    cancel.set_defaults(handler=_cmd_cancel)

    web = commands.add_parser("web", help="serve the dashboard (needs the web extra)")
    _add_database(web)
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    web.add_argument("--port", type=_port, default=8765, help="port to bind (default: 8765)")
    web.add_argument(
        "--token", default=None, help="sign-in token, 16+ characters (better: $PGQUEUE_WEB_TOKEN)"
    )
    web.add_argument(
        "--basic-auth",
        default=None,
        metavar="USER:PASSWORD",
        help="basic auth (better: $PGQUEUE_WEB_BASIC_AUTH)",
    )
    web.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without authentication (anyone who can reach it)",
    )
    web.add_argument("--read-only", action="store_true", help="show everything, allow no action")
    web.add_argument(
        "--extension",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="add an extension's pages, e.g. chimeway.web:extension (repeatable)",
    )
    web.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    web.set_defaults(handler=_cmd_web)

    prune = commands.add_parser("prune", help="delete finished jobs older than --max-age")
    _add_database(prune)
    prune.add_argument("--max-age", type=_duration, default=86_400.0, metavar="SECONDS")
    prune.add_argument("--limit", type=_count, default=10_000, help="jobs deleted per transaction")
    prune.add_argument("--all", action="store_true", help="repeat until nothing older is left")
    prune.set_defaults(handler=_cmd_prune)
    return parser


def _one_line(text: str) -> str:
    """``text`` with control characters escaped: argparse echoes raw arguments, newlines included."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    dsn: str | None = None
    try:
        args = parser.parse_args(argv)
        # Every error below is shown through describe_error, which masks this DSN's password (and
        # shows none of a DSN libpq can't parse).
        dsn = getattr(args, "dsn", None) or os.environ.get("DATABASE_URL") or None
        return int(args.handler(args))
    except _UsageError as exc:
        print(f"pgqueue: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except psycopg.OperationalError as exc:
        print(f"pgqueue: cannot reach the database: {_one_line(describe_error(exc, dsn))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        print(f"pgqueue: {_one_line(describe_error(exc, dsn))}", file=sys.stderr)
        return EXIT_ERROR
