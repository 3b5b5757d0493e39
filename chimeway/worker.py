"""``python -m chimeway.worker``: the process that performs deliveries.

Reads ``DATABASE_URL`` and an optional ``chimeway.toml`` (``--config`` or ``$CHIMEWAY_CONFIG``),
optionally applies pending migrations (``--migrate``), then runs the ``chimeway_delivery`` queue
with pgqueue's plugins and the recovery of stuck deliveries (:mod:`chimeway.recovery`) until
SIGTERM or SIGINT, when it stops gracefully and exits 0. Logs one structured line per delivery
outcome. A bad configuration is one clear line and exit code 2.

One process runs one event loop: the queue's producer, the dispatcher's batches (a pool of a few
connections of its own) and the async adapters' shared clients all live on it; sync adapters run
in a bounded set of threads.
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

from pgqueue import pooler
from pgqueue.lifecycle import describe_error
from pgqueue.plugins import Plugin
from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.pruner import Pruner
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime
from pgqueue.telemetry import JsonFormatter

from .adapters import resolve_adapter
from .config import ConfigError, Settings, load_settings
from .digests import FLUSH_QUEUE
from .dispatch import QUEUE, ChannelRoute, Dispatcher, configure
from .migrations import migrate_all
from .recovery import Recovery

__all__ = [
    "WorkerRuntime",
    "build_dispatcher",
    "build_runtime",
    "engine_for",
    "main",
    "queues_for",
    "session_factory",
]

EXIT_CONFIG = 2
# A window's first flush job flushes the whole window; the others find it done. Two at a time
# keep one window's flush from holding back the next, without piling up waits on the same locks.
_FLUSH_LIMIT = 2


def engine_for(settings: Settings, pool_size: int) -> Engine:
    """A SQLAlchemy engine on the psycopg driver for any DSN form (URI or key=value).

    Its errors never quote a statement's parameters (they may be personal data, and an error's text
    can end up in a job's ``errors``)."""
    dsn = settings.database_url

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn)
        pooler.configure(conn)  # no prepared statements behind a transaction pooler
        return conn

    return create_engine(
        "postgresql+psycopg://",
        creator=connect,
        pool_size=pool_size,
        max_overflow=pool_size,
        hide_parameters=True,
        # No pre-ping (a round trip per checkout): a connection broken by a database restart is
        # detected when used, invalidated with the rest of the pool, and the job is retried.
        pool_pre_ping=False,
    )


def session_factory(engine: Engine, schema: str) -> sessionmaker[Session]:
    mapped = engine.execution_options(schema_translate_map={None: schema})
    return sessionmaker(mapped, expire_on_commit=False)


def build_dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher of ``settings``' channels, on its own pool of the worker's database."""
    routes = {
        name: ChannelRoute(resolve_adapter(channel.adapter), channel.config)
        for name, channel in settings.channels.items()
    }
    limits = {name: channel.limits for name, channel in settings.channels.items() if channel.limits}
    return Dispatcher(
        settings.database_url,
        schema=settings.schema,
        routes=routes,
        retry_backoff=settings.retry_backoff,
        limits=limits,
    )


class WorkerRuntime(Runtime):
    """pgqueue's runtime, with the dispatcher opened before its queues start and closed after they
    stop (so the batches still in flight at shutdown can finish)."""

    def __init__(self, *args: Any, dispatcher: Dispatcher, **options: Any) -> None:
        super().__init__(*args, **options)
        self.dispatcher = dispatcher

    async def start(self) -> None:
        await self.dispatcher.open()
        try:
            await super().start()
        except BaseException:
            await self.dispatcher.aclose()
            raise

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await self.dispatcher.aclose()


def build_runtime(
    settings: Settings, *, dispatcher: Dispatcher | None = None, stager_interval: float = 1.0
) -> WorkerRuntime:
    plugins: list[Plugin] = [
        Stager(interval=stager_interval),
        Lifeline(rescue_window=settings.rescue_window),
        # deliveries left dispatched with no live job (deleted, or discarded after crashes)
        Recovery(stuck_after=settings.recover_after),
    ]
    if settings.prune_after is not None:
        plugins.append(Pruner(max_age=settings.prune_after))
    return WorkerRuntime(
        settings.database_url,
        direct_conninfo=settings.direct_database_url,
        dispatcher=dispatcher or build_dispatcher(settings),
        queues=queues_for(settings),
        schema=settings.schema,
        node=settings.node,
        plugins=plugins,
        shutdown_grace_period=settings.shutdown_grace,
    )


def queues_for(settings: Settings) -> dict[str, Any]:
    """The dispatch queue, the digest flush queue, and one paced queue per provider account with
    limits."""
    queues: dict[str, Any] = {QUEUE: settings.queue_limit, FLUSH_QUEUE: _FLUSH_LIMIT}
    for channel in settings.channels.values():
        if channel.limits is not None:
            queues[channel.limits.queue] = channel.limits.queue_config(settings.queue_limit)
    return queues


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


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value!r}")
    return int(value)


def serve_metrics(settings: Settings, port: int, host: str) -> None:
    """pgqueue's and Chimeway's metrics at ``http://host:port/metrics``, from a daemon thread."""
    from pgqueue import metrics as queue_metrics

    from .metrics import DeliveryCollector, DeliveryMetrics

    registry, _ = queue_metrics.registry(settings.database_url, settings.schema)
    DeliveryMetrics(registry).attach()
    registry.register(DeliveryCollector(settings.database_url, settings.schema))
    queue_metrics.serve(registry, port, host)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m chimeway.worker", description="Perform Chimeway deliveries.")
    parser.add_argument("--config", help="a chimeway.toml file (default: $CHIMEWAY_CONFIG, if set)")
    parser.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    parser.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus metrics at :PORT/metrics"
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default: 127.0.0.1)"
    )
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
        if args.metrics_port is not None:
            serve_metrics(settings, args.metrics_port, args.metrics_host)
        dispatcher = build_dispatcher(settings)
        configure(dispatcher)
        build_runtime(settings, dispatcher=dispatcher).run()
    except psycopg.OperationalError as exc:
        print(f"chimeway.worker: cannot reach the database: {describe_error(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"chimeway.worker: {describe_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
