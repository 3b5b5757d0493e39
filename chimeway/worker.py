"""``python -m chimeway.worker``: the process that performs deliveries.

Reads ``DATABASE_URL`` and an optional ``chimeway.toml`` (``--config`` or ``$CHIMEWAY_CONFIG``),
optionally applies pending migrations (``--migrate``), then runs the ``chimeway_delivery`` queue
with pgqueue's plugins until SIGTERM or SIGINT, when it stops gracefully and exits 0. Logs one
structured line per delivery outcome. A bad configuration is one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from pgqueue.plugins import Plugin
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.pruner import Pruner
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime
from pgqueue.telemetry import JsonFormatter

from .adapters import resolve_adapter
from .config import ConfigError, Settings, load_settings
from .dispatch import QUEUE, ChannelRoute, Dispatcher, configure
from .migrations import migrate_all

__all__ = ["build_dispatcher", "build_runtime", "main", "session_factory"]

EXIT_CONFIG = 2


def engine_for(settings: Settings, pool_size: int) -> Engine:
    """A SQLAlchemy engine on the psycopg driver for any DSN form (URI or key=value)."""
    dsn = settings.database_url
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (a round trip per checkout): a connection broken by a database restart is
        # detected when used, invalidated with the rest of the pool, and the job is retried.
        pool_pre_ping=False,
    )


def session_factory(engine: Engine, schema: str) -> sessionmaker[Session]:
    mapped = engine.execution_options(schema_translate_map={None: schema})
    return sessionmaker(mapped, expire_on_commit=False)


def build_dispatcher(settings: Settings, engine: Engine) -> Dispatcher:
    routes = {
        name: ChannelRoute(resolve_adapter(channel.adapter), channel.config)
        for name, channel in settings.channels.items()
    }
    return Dispatcher(session_factory(engine, settings.schema), routes, retry_backoff=settings.retry_backoff)


def build_runtime(settings: Settings, *, stager_interval: float = 1.0) -> Runtime:
    plugins: list[Plugin] = [Stager(interval=stager_interval), Lifeline(rescue_window=settings.rescue_window)]
    if settings.prune_after is not None:
        plugins.append(Pruner(max_age=settings.prune_after))
    return Runtime(
        settings.database_url,
        queues={QUEUE: settings.queue_limit},
        schema=settings.schema,
        node=settings.node,
        plugins=plugins,
        shutdown_grace_period=settings.shutdown_grace,
    )


def _configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("psycopg", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ConfigError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m chimeway.worker", description="Perform Chimeway deliveries.")
    parser.add_argument("--config", help="a chimeway.toml file (default: $CHIMEWAY_CONFIG, if set)")
    parser.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    try:
        args = parser.parse_args(argv)
        settings = load_settings(args.config)
    except ConfigError as exc:
        # One line even when a flag or path carries a newline (argparse echoes arguments raw).
        message = "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(exc))
        print(f"chimeway.worker: {message}", file=sys.stderr)
        return EXIT_CONFIG
    _configure_logging(args.log_format, args.log_level)
    try:
        if args.migrate:
            with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
                for status in migrate_all(conn, settings.schema):
                    logging.getLogger("chimeway.worker").info(
                        "%s at version %d in schema %r", status.component, status.version, settings.schema
                    )
        engine = engine_for(settings, pool_size=settings.queue_limit + 2)
        configure(build_dispatcher(settings, engine))
        build_runtime(settings).run()
    except psycopg.OperationalError as exc:
        print(
            f"chimeway.worker: cannot reach the database: {str(exc).strip().splitlines()[0]}", file=sys.stderr
        )
        return 1
    except Exception as exc:
        print(
            f"chimeway.worker: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
