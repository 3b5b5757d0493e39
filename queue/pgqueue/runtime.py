"""The runtime: runs a node's queues and plugins in one anyio task group.

::

    runtime = pgqueue.Runtime(dsn, queues={"default": 10, "media": {"limit": 5}}, workers=["myapp.workers"])
    async with runtime:          # start everything; leave the block to shut down gracefully
        ...
    await runtime.start()        # or start and stop it from an application's own hooks,
    await runtime.stop()         # on the application's running event loop
    runtime.run()                # or: block until SIGTERM/SIGINT, then shut down gracefully

Inside: a connection pool; a notifier (one LISTEN connection); a leader (lease election); a
completer (batched acks); a heartbeat; queue control (:mod:`pgqueue.control`: commands read from
the signals table); one producer per queue; and the plugins (stager and lifeline by default).
Every part has the same lifecycle (:func:`pgqueue.lifecycle.supervise`): a database outage makes
parts log, back off and resume, never stop the node.

Shutting down: producers stop fetching; running jobs get ``shutdown_grace_period`` seconds to
finish; then, within ``shutdown_flush_timeout`` seconds whatever the database does, their acks are
flushed, the producers' rows are deleted (so any job still running is rescued by the lifeline
elsewhere) and leadership is given up.

Durability: claims and acks commit without waiting for their WAL flush unless
``synchronous_acks=True``. A PostgreSQL crash may then lose the last few milliseconds of them, and
each one lost re-runs its job, exactly as a worker crash does (at-least-once either way). Jobs
themselves are never at risk: they are inserted in the application's transactions, at its
durability. Waiting for the flush costs a third of the throughput of a queue of short jobs.

Results: what a worker returns is recorded with its completing ack, up to ``result_max_bytes``
encoded (see :mod:`pgqueue.results`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from psycopg_pool import AsyncConnectionPool

from . import migrate, pooler, telemetry
from . import options as opt
from .completer import Completer
from .control import SIGNAL_TOPIC, Control
from .executor import Executor
from .heartbeat import Heartbeat
from .leader import Leader
from .lifecycle import SYSTEM_CLOCK, Clock, Service, check_conninfo, supervise
from .manage import acancel_job
from .middleware import Middleware
from .node_pool import acheck_connections, default_node_name, node_name, node_pool
from .notifier import Notifier, Payload, PostgresNotifier
from .plugins import Plugin, PluginContext, PluginRunner
from .plugins.lifeline import Lifeline, heartbeat_for
from .plugins.stager import Stager
from .processes import ProcessPool, validate_processes
from .producer import Producer
from .queue_config import QueueConfig
from .queue_control import QueueControl
from .queues import aresolve_queues
from .results import DEFAULT_RESULT_MAX_BYTES
from .worker import WorkerRegistry, load_worker_modules, registry

__all__ = ["Runtime", "default_node_name"]

_log = logging.getLogger("pgqueue.runtime")
INSERT_TOPIC = "insert"


@dataclass
class _Running:
    producer: Producer
    scope: anyio.CancelScope
    #: set once the producer's task has ended (its taken acks handed back to the completer)
    stopped: anyio.Event = field(default_factory=anyio.Event)


class Runtime(QueueControl):
    """Runs queues and plugins for one node. See the module docstring."""

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        direct_conninfo: str | None = None,
        queues: Mapping[str, int | Mapping[str, Any] | None] | None = None,
        queues_from_database: bool = False,
        workers: Sequence[str] = (),
        schema: str = "public",
        node: str | None = None,
        plugins: Sequence[Plugin] | None = None,
        leadership: bool = True,
        shutdown_grace_period: float = 15.0,
        shutdown_flush_timeout: float = 5.0,
        poll_interval: float = 1.0,
        heartbeat_interval: float | None = None,
        leader_interval: float = 15.0,
        notifier: Notifier | None = None,
        worker_registry: WorkerRegistry = registry,
        verify_schema: bool = True,
        pool_size: int | None = None,
        synchronous_acks: bool = False,
        processes: int = 0,
        middleware: Sequence[Middleware] = (),
        result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        migrate.validate_schema_name(schema)
        self.schema = schema
        self.node = node_name(node)
        #: the code's queues (None: settings from the database's pgqueue_queues)
        self.queue_configs: dict[str, QueueConfig | None] = {
            q: None if v is None else QueueConfig.parse(q, v) for q, v in (queues or {}).items()
        }
        self.queues_from_database = queues_from_database
        self.worker_modules = tuple(workers)
        self.plugins: list[Plugin] = list(plugins) if plugins is not None else [Stager(), Lifeline()]
        self.leadership = leadership
        self.shutdown_grace_period = opt.seconds(shutdown_grace_period, "shutdown_grace_period")
        self.shutdown_flush_timeout = opt.positive_seconds(shutdown_flush_timeout, "shutdown_flush_timeout")
        self.poll_interval = opt.positive_seconds(poll_interval, "poll_interval")
        self.heartbeat_interval = heartbeat_for(heartbeat_interval, self.plugins)
        leader_interval = opt.positive_seconds(leader_interval, "leader_interval")
        if conninfo:
            check_conninfo(conninfo)
        if direct_conninfo:
            check_conninfo(direct_conninfo)
        self.registry = worker_registry
        self.verify_schema = verify_schema
        self.clock = clock
        self._own_pool = pool is None
        size = pool_size or max(4, len(self.queue_configs) + 4)
        self.pool, self.conninfo = node_pool(conninfo, pool, self.node, size)
        #: where LISTEN and session-bound maintenance connect: PostgreSQL itself, when ``conninfo``
        #: goes through a transaction pooler (see :mod:`pgqueue.pooler`)
        self.direct_conninfo: str = direct_conninfo or self.conninfo
        self._direct_given = bool(direct_conninfo)
        self.pool_mode = pooler.PoolMode.DIRECT
        self.notifier: Notifier = notifier or PostgresNotifier(self.direct_conninfo, schema, pool=self.pool)
        self.leader: Leader | None = (
            Leader(self.pool, schema, self.node, notifier=self.notifier, interval=leader_interval)
            if leadership
            else None
        )
        self.synchronous_acks = synchronous_acks
        self.completer = Completer(self.pool, schema, clock=clock, async_commit=not synchronous_acks)
        #: sync jobs run in this many worker processes (see :mod:`pgqueue.processes`); 0: in threads
        self.processes = validate_processes(processes)
        self.process_pool = ProcessPool(self.processes, self.worker_modules) if self.processes else None
        self.executor = Executor(
            worker_registry,
            completer=self.completer.ack,
            clock=clock.monotonic,
            processes=self.process_pool,
            middleware=middleware,
            result_max_bytes=result_max_bytes,
        )
        self.heartbeat = Heartbeat(
            self.pool, schema, self.node, self._producers, interval=self.heartbeat_interval, clock=clock
        )
        self.control = Control(
            self.pool, schema, self, self.notifier, is_leader=self.is_leader, poll_interval=self.poll_interval
        )
        self._queues: dict[str, _Running] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._service_scope: anyio.CancelScope | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the pool, check the schema, and start every service and queue."""
        if self.started:
            raise RuntimeError("this runtime is already started")
        load_worker_modules(self.worker_modules)
        if self._own_pool:
            await self.pool.open(wait=True, timeout=30)
        self.pool_mode = await acheck_connections(
            self.pool,
            self.schema,
            self.conninfo,
            self.direct_conninfo if self._direct_given else None,
            verify_schema=self.verify_schema,
        )
        configs = {q: c for q, c in self.queue_configs.items() if c is not None}
        if self.verify_schema or self.queues_from_database or len(configs) < len(self.queue_configs):
            # Declared queues: a row of pgqueue_queues wins over the code's settings.
            async with self.pool.connection() as conn:
                configs = await aresolve_queues(
                    conn, self.queue_configs, schema=self.schema, everything=self.queues_from_database
                )
        await self.control.prepare()
        self._tg = await self._host_task_group()
        self.started = True
        self._unsubscribe = [
            self.notifier.subscribe(INSERT_TOPIC, self._on_insert),
            # Whatever a notification on the signal topic says, it only makes control read the table.
            self.notifier.subscribe(SIGNAL_TOPIC, lambda payload: self.control.wake()),
            self.notifier.on_status(self._on_notifier_status),
        ]
        services: list[Service] = [self.notifier, self.completer, self.heartbeat, self.control]
        if self.leader is not None:
            services.append(self.leader)
        context = PluginContext(
            self.pool,
            self.direct_conninfo,
            self.schema,
            self.node,
            self.notifier,
            self.is_leader,
            self._wake_queue,
            self.clock,
        )
        services += [PluginRunner(plugin, context) for plugin in self.plugins]
        for service in services:
            self._tg.start_soon(supervise, service, name=f"pgqueue {service.name}")
        with anyio.move_on_after(5):
            await self.notifier.wait_ready(5)
        if self.process_pool is not None:
            try:
                await self.process_pool.start()
            except BaseException:
                await self.stop()
                raise
        for queue, config in configs.items():
            self._start_producer(queue, config)

    async def _host_task_group(self) -> anyio.abc.TaskGroup:
        """The parts' task group, in a task of its own: start() and stop() may come from different
        tasks (an application's hooks), and the caller's task is never inside its cancel scope."""
        ready: asyncio.Future[anyio.abc.TaskGroup] = asyncio.get_running_loop().create_future()

        async def host() -> None:
            async with anyio.create_task_group() as tg:
                ready.set_result(tg)
                await anyio.sleep_forever()

        self._host = asyncio.get_running_loop().create_task(host(), name=f"pgqueue runtime {self.node}")
        self._host.add_done_callback(self._host_ended)
        return await ready

    def _host_ended(self, task: asyncio.Task[None]) -> None:
        if self.started and not task.cancelled() and task.exception() is not None:
            _log.error("pgqueue node %s stopped: %r", self.node, task.exception())

    def is_leader(self) -> bool:
        return self.leader is not None and self.leader.is_leader

    def _producers(self) -> list[Producer]:
        return [running.producer for running in self._queues.values()]

    def _start_producer(self, queue: str, config: QueueConfig) -> Producer:
        assert self._tg is not None
        producer = Producer(
            queue,
            replace(config),
            self.pool,
            self.schema,
            self.node,
            self.executor,
            self.completer,
            self.heartbeat.register,
            poll_interval=self._poll_interval(),
            async_commit=not self.synchronous_acks,
            clock=self.clock,
        )
        scope = anyio.CancelScope()
        self._queues[queue] = _Running(producer, scope)

        running = self._queues[queue]

        async def run() -> None:
            try:
                with scope:
                    await supervise(producer)
            finally:
                running.stopped.set()

        self._tg.start_soon(run, name=f"pgqueue {producer.name}")
        return producer

    def _poll_interval(self) -> float:
        # Without notifications, poll often enough that pickup stays quick.
        return self.poll_interval if self.notifier.status == "listening" else min(self.poll_interval, 0.1)

    async def stop(self) -> None:
        """Shut down gracefully (see the module docstring). Safe to call twice.

        Returns within ``shutdown_grace_period`` (for running jobs) plus ``shutdown_flush_timeout``
        (for writing the last acks, saying goodbye and resigning), whatever the database does;
        acks it could not write are counted in a warning, and their jobs are left to the lifeline.
        """
        if not self.started or self._tg is None:
            return
        self.started = False
        running = self._producers()
        for producer in running:
            producer.stop_fetching()
        orphaned: dict[str, list[int]] = {}

        async def drain(producer: Producer) -> None:
            left = await producer.wait_drained(self.shutdown_grace_period)
            if left:
                orphaned[producer.queue] = left

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for producer in running:
                    tg.start_soon(drain, producer)
            finish_by = anyio.current_time() + self.shutdown_flush_timeout
            if self.process_pool is not None:
                self.process_pool.retire()  # the jobs abandoned next kill their processes for good
            for entry in self._queues.values():
                entry.scope.cancel()
            with anyio.CancelScope(deadline=finish_by):
                # A producer stopped mid-fetch hands its acks back to the completer as it ends:
                # wait for that before the final flush, or those acks would be lost.
                for entry in self._queues.values():
                    await entry.stopped.wait()
                await _quietly(self.completer.flush(), "flush acks")
                await _quietly(self.heartbeat.goodbye(running), "remove producer rows")
            for queue, ids in orphaned.items():
                _log.warning(
                    "pgqueue: %d jobs of queue %r still running at shutdown; left for the lifeline",
                    len(ids),
                    queue,
                )
                telemetry.emit(("queue", "shutdown"), {}, {"queue": queue, "orphaned": ids})
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self.leader is not None:
            self.leader.resign_timeout = min(self.leader.resign_timeout, _left(finish_by))
        # Cancelling the group stops the remaining services; the leader resigns as it stops.
        self._tg.cancel_scope.cancel()
        try:
            if self._host is not None:
                await asyncio.shield(self._host)
        finally:
            self._tg = None
            self._host = None
            self._queues.clear()
            if self.completer.backlog:
                _log.warning(
                    "pgqueue: %d acks could not be written within the %gs shutdown deadline; "
                    "their jobs stay executing until the lifeline rescues them",
                    self.completer.backlog,
                    self.shutdown_flush_timeout,
                )
            if self.process_pool is not None:
                # Jobs past the grace period had their processes killed as the producers stopped;
                # the idle ones exit when told. None outlives the node.
                with anyio.CancelScope(shield=True):
                    await self.process_pool.stop(max(1.0, _left(finish_by)))
            if self._own_pool:
                with anyio.CancelScope(shield=True):
                    await self.pool.close(timeout=_left(finish_by))

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully. Blocks; for a process's main."""
        anyio.run(self._run_until_signalled)

    async def _run_until_signalled(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with self:
                _log.info("pgqueue node %s running queues %s", self.node, sorted(self.queue_configs))
                async for signum in signals:
                    _log.info(
                        "pgqueue node %s: %s received, shutting down", self.node, signal.Signals(signum).name
                    )
                    break

    # -- notifications -----------------------------------------------------------------------------

    def _on_insert(self, payload: Payload) -> None:
        queue = payload.get("queue")
        if isinstance(queue, str):
            self._wake_queue(queue)

    def _wake_queue(self, queue: str) -> None:
        running = self._queues.get(queue)
        if running is not None:
            running.producer.wake()

    def _on_notifier_status(self, status: str) -> None:
        telemetry.emit(("notifier", "status"), {}, {"status": status, "node": self.node})
        interval = self._poll_interval()
        for producer in self._producers():
            producer.poll_interval = interval
            producer.wake()  # notifications may have been missed while reconnecting

    # -- what queue control steers (see pgqueue.control) -------------------------------------------

    def running_queues(self) -> dict[str, Producer]:
        return {queue: running.producer for queue, running in self._queues.items()}

    def start_queue_here(self, queue: str, config: QueueConfig) -> None:
        if queue not in self._queues and self.started:
            self._start_producer(queue, config)

    def configure_queue_here(self, queue: str, config: QueueConfig | None) -> None:
        running = self._queues.get(queue)
        if config is None:  # no longer declared: a node that runs the table's queues stops it
            if running is not None and self.queues_from_database:
                self.stop_queue_here(queue)
        elif running is not None:
            running.producer.configure(config)
        elif self.queues_from_database:
            self.start_queue_here(queue, config)

    def stop_queue_here(self, queue: str) -> None:
        running = self._queues.get(queue)
        if running is not None and self._tg is not None:
            self._tg.start_soon(self._stop_queue_gracefully, queue, running)

    async def _stop_queue_gracefully(self, queue: str, running: _Running) -> None:
        running.producer.stop_fetching()
        left = await running.producer.wait_drained(self.shutdown_grace_period)
        running.scope.cancel()
        finish_by = anyio.current_time() + self.shutdown_flush_timeout
        with anyio.CancelScope(deadline=finish_by):
            await running.stopped.wait()
        self._queues.pop(queue, None)  # before the goodbye, or the heartbeat would bring it back
        with anyio.CancelScope(deadline=finish_by):
            await _quietly(self.completer.flush(), "flush acks")
            await _quietly(self.heartbeat.goodbye([running.producer]), "remove producer row")
        if left:
            telemetry.emit(("queue", "shutdown"), {}, {"queue": queue, "orphaned": left})

    # -- queue control (the requests: pgqueue.queue_control) -------------------------------------

    async def cancel_job(self, job_id: int) -> bool:
        """Cancel a job in the database and, when it is executing, stop it wherever it runs."""
        async with self.pool.connection() as conn:
            changed = await acancel_job(conn, job_id, schema=self.schema)
        if changed:
            # The statement signalled every node at commit; act on it here now, heard or not.
            await self.control.catch_up()
        return changed

    def check_queue(self, queue: str) -> dict[str, Any] | None:
        """This node's view of ``queue``: limit, paused, running job ids, node; None if not run here."""
        running = self._queues.get(queue)
        return running.producer.check() if running is not None else None

    def check_all_queues(self) -> list[dict[str, Any]]:
        return [self._queues[q].producer.check() for q in sorted(self._queues)]

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no job runs here and every ack is written (useful in tests)."""
        with anyio.fail_after(timeout):
            while any(p.running for p in self._producers()):  # noqa: ASYNC110 - a test helper's poll
                await anyio.sleep(0.005)
            await self.completer.wait_idle()


async def _quietly(work: Any, what: str) -> None:
    try:
        await work
    except Exception as exc:
        _log.warning("pgqueue: could not %s during shutdown (%s)", what, exc)


def _left(deadline: float) -> float:
    return max(0.0, deadline - anyio.current_time())
