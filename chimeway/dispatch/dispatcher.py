"""The :class:`Dispatcher`: where deliveries go (routes), what they run on (database, threads), and
the two ways to send one — batched under the queue, or :meth:`Dispatcher.deliver_now`."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Final

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.orm import Session

import pgqueue
from pgqueue import pooler

from .. import deliveries, telemetry
from ..adapters import Adapter, DeliveryContext, Failed, resolve_adapter
from ..adapters.base import classify
from ..channel_limits import ChannelLimits
from ..errors import ChimewayError, DeliveryNotFound
from ..models import Delivery
from ..rendering import RenderError, Templates
from ..store import queries_for
from . import records
from .batcher import Batcher, Pending
from .contract import DELIVERY_ATTEMPTS, ChannelRoute, Route, log_outcome

__all__ = ["DEFAULT_ATTEMPT_TIMEOUT", "Dispatcher", "Route"]

#: Seconds one adapter call may take when neither its route nor its adapter says otherwise.
DEFAULT_ATTEMPT_TIMEOUT: Final = 30.0
#: A job may run this much longer than its slowest channel's call: the claim and the record.
JOB_TIMEOUT_MARGIN: Final = 30.0
_MAX_ADAPTER_NAME: Final = 128


class Dispatcher:
    """What the dispatch worker needs: the database, and an adapter for every channel.

    ``conninfo`` (a DSN) or ``pool`` (a psycopg ``AsyncConnectionPool`` whose connections are in
    autocommit, such as pgqueue's runtime pool) reaches Chimeway's tables in ``schema``. ``routes``
    maps a channel to its adapter and config; other channels use ``default`` (the logger adapter).
    ``retry_backoff`` overrides the queue's default backoff (seconds). ``session_factory`` makes
    SQLAlchemy sessions on the same tables, for :meth:`deliver_now` only.

    Under the queue, deliveries go in batches of up to ``batch_size`` (see
    :mod:`chimeway.dispatch.batcher`). Use the dispatcher as an async context manager (or
    :meth:`open` / :meth:`aclose`) in the event loop that runs the jobs: it then keeps a pool of
    ``pool_size`` connections and the adapters' shared clients for that loop. Without that (a
    test's ``perform_job``, say) every batch opens a connection of its own.

    Tuning, rarely needed: ``attempt_timeout`` bounds a call whose route and adapter name no
    deadline; ``thread_limit`` bounds the threads running sync adapters; ``record_delay`` is how
    long finished attempts wait for slower ones of their batch before being recorded;
    ``synchronous_commit=True`` makes every claim and record wait for its WAL flush (by default
    they don't, like pgqueue's own claims and acks: a database crash may then re-send a delivery
    under the same idempotency key, as a worker crash does, but never lose one).
    ``templates`` are the template versions deliveries may name (:mod:`chimeway.rendering`).
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        schema: str = "public",
        routes: Mapping[str, ChannelRoute] | None = None,
        default: ChannelRoute | None = None,
        retry_backoff: float | None = None,
        session_factory: Callable[[], Session] | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        batch_size: int = 100,
        pool_size: int = 4,
        thread_limit: int = 40,
        record_delay: float = 0.002,
        synchronous_commit: bool = False,
        limits: Mapping[str, ChannelLimits] | None = None,
        templates: Templates | None = None,
    ) -> None:
        if pool is None and not conninfo:
            raise ChimewayError("Dispatcher needs a conninfo (DSN) or a psycopg_pool.AsyncConnectionPool")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("pool_size", pool_size, 1),
            ("thread_limit", thread_limit, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ChimewayError(f"{name} must be an integer >= {low}, got {value!r}")
        self.conninfo = conninfo
        self.schema = schema
        self.queries = queries_for(schema)
        self.routes: dict[str, ChannelRoute] = dict(routes or {})
        self.default = default or ChannelRoute(resolve_adapter("logger"))
        self.retry_backoff = retry_backoff
        self.session_factory = session_factory
        self.attempt_timeout = float(attempt_timeout)
        self.batch_size = batch_size
        self.pool_size = pool_size
        self.thread_limit = thread_limit
        self.record_delay = record_delay
        self.synchronous_commit = synchronous_commit
        #: channel → the provider limits its deliveries are paced by (see chimeway.channel_limits)
        self.limits: dict[str, ChannelLimits] = dict(limits or {})
        #: the template versions deliveries may name (see chimeway.rendering)
        self.templates = templates if templates is not None else Templates()
        self._given_pool = pool
        self._prepared = {channel: self._prepare(route) for channel, route in self.routes.items()}
        self._default = self._prepare(self.default)
        self._job_timeout: float | None = None
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = (
            weakref.WeakKeyDictionary()
        )
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"Dispatcher(schema={self.schema!r}, channels={sorted(self.routes)})"

    # -- routes ------------------------------------------------------------------------------------

    def _prepare(self, route: ChannelRoute) -> Route:
        adapter = route.adapter
        deadline = route.timeout
        if deadline is None:
            own = getattr(adapter, "attempt_timeout", None)
            deadline = float(own(route.config)) if callable(own) else self.attempt_timeout
        name = str(getattr(adapter, "name", type(adapter).__name__))[:_MAX_ADAPTER_NAME]
        return Route(adapter, route.config, name, inspect.iscoroutinefunction(adapter.deliver), deadline)

    def route(self, channel: str) -> ChannelRoute:
        """The route of ``channel``: its own, else the default (telling telemetry it fell back)."""
        route = self.routes.get(channel)
        if route is None and self.routes and telemetry.has_handlers():
            telemetry.emit(("chimeway", "dispatch", "adapter_fallback"), {"count": 1}, {"channel": channel})
        return route or self.default

    def route_for(self, channel: str) -> Route:
        """The prepared route of ``channel`` (see :meth:`route`)."""
        prepared = self._prepared.get(channel)
        if prepared is None:
            self.route(channel)  # the fallback's telemetry
            return self._default
        return prepared

    def job_timeout(self) -> float:
        """How long one dispatch job may run: its slowest channel's deadline and the margin."""
        if self._job_timeout is None:  # asked once per job: worked out once
            slowest = max(r.deadline for r in (*self._prepared.values(), self._default))
            self._job_timeout = slowest + JOB_TIMEOUT_MARGIN
        return self._job_timeout

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open this event loop's connection pool and the adapters' shared clients."""
        loop = asyncio.get_running_loop()
        if self._given_pool is None and loop not in self._pools:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.conninfo or "",
                min_size=min(2, self.pool_size),
                max_size=self.pool_size,
                open=False,
                name="chimeway-dispatch",
                configure=self._configure,
            )
            await pool.open(wait=True, timeout=30)
            self._pools[loop] = pool
        for adapter in self._adapters():
            opener = getattr(adapter, "open", None)
            if opener is not None and inspect.iscoroutinefunction(opener):
                await opener()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Let this loop's batches in flight finish (up to ``timeout`` s), then close what
        :meth:`open` opened."""
        loop = asyncio.get_running_loop()
        batcher = self._batchers.pop(loop, None)
        if batcher is not None:
            await batcher.wait_idle(timeout)
        for adapter in self._adapters():
            closer = getattr(adapter, "aclose", None)
            if closer is not None and inspect.iscoroutinefunction(closer):
                await closer()
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Dispatcher:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _adapters(self) -> list[Adapter]:
        unique: dict[int, Adapter] = {}
        for route in (*self.routes.values(), self.default):
            unique.setdefault(id(route.adapter), route.adapter)
        return list(unique.values())

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Each statement is its own transaction: one round trip, no BEGIN/COMMIT.
        await conn.set_autocommit(True)
        # Behind a transaction pooler a server session serves other clients too: no prepared
        # statements, and no session setting (records then wait for their WAL flush).
        if await pooler.aconfigure(conn):
            return
        if not self.synchronous_commit:
            # As pgqueue's claims and acks: a PostgreSQL crash may lose the last milliseconds of
            # records; their jobs' acks came later and are lost with them, so each such job runs
            # again and re-sends under the same idempotency key, as after a worker crash.
            await conn.execute("SET synchronous_commit = off")

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection in autocommit to Chimeway's tables, from this loop's pool when the
        dispatcher is open in it, else a new one: for the worker's other jobs (digest flushes,
        journey moves) that ride beside the dispatch queue."""
        return self._connection()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._given_pool or self._pools.get(asyncio.get_running_loop())
        if pool is not None:
            async with pool.connection() as conn:
                yield conn
            return
        conn = await psycopg.AsyncConnection.connect(self.conninfo or "")
        try:
            await self._configure(conn)
            yield conn
        finally:
            await conn.close()

    # -- the batched path --------------------------------------------------------------------------

    async def perform(self, job: pgqueue.Job) -> Any:
        """Run one dispatch job; returns the job's result (None for success, or an outcome)."""
        delivery_id = _delivery_id(job.args)
        if delivery_id is None:
            return pgqueue.Cancel(f"malformed delivery_id: {job.args.get('delivery_id')!r}")
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = Batcher(self, loop)
        budget = min(job.max_attempts, DELIVERY_ATTEMPTS)
        # The canonical spelling goes into the claim's array literal: uuid.UUID also accepts forms
        # (braces, stray hyphens) that would break the literal or that PostgreSQL refuses.
        pending = Pending(delivery_id, str(delivery_id), job.attempt, budget, loop.create_future())
        batcher.submit(pending)
        return await pending.future

    async def hand_off(self, job: pgqueue.Job, paced_job: Callable[[uuid.UUID, str], pgqueue.NewJob]) -> bool:
        """When ``job``'s delivery is pending on a channel with limits, insert its paced job into the
        account's queue (committed at once) and return True; else False. A second hand-off of one
        delivery (its first job re-run after a crash) is the same unique job."""
        delivery_id = _delivery_id(job.args)
        if delivery_id is None:
            return False
        async with self._connection() as conn:
            cursor = await conn.execute(self.queries.dispatch_channel, {"id": str(delivery_id)})
            row = await cursor.fetchone()
            limit = self.limits.get(row[0]) if row else None
            if limit is None:
                return False
            await pgqueue.ainsert(conn, paced_job(delivery_id, limit.queue), schema=self.schema)
        return True

    async def claim_batch(self, ids: Sequence[str]) -> dict[uuid.UUID, records.Claim]:
        async with self._connection() as conn:
            return await records.claim(conn, self.queries, ids)

    async def record_batch(
        self, items: Sequence[records.RecordItem]
    ) -> dict[uuid.UUID, records.Recorded | BaseException]:
        async with self._connection() as conn:
            return await records.record(conn, self.queries, items)

    async def call_adapter(
        self, route: Route, context: DeliveryContext, threads: anyio.CapacityLimiter
    ) -> object:
        """One adapter call within its deadline; whatever it raises is a temporary failure.

        A delivery that names a template is rendered first (in a worker thread, under the
        template set's own budget): a render that fails is a permanent failure of that delivery,
        recorded with the reason, and the adapter is not called.
        """
        if context.render_key is not None:
            rendered = await anyio.to_thread.run_sync(self._render, context, limiter=threads)
            if isinstance(rendered, Failed):
                return rendered
            context = rendered
        timer = asyncio.timeout(route.deadline)
        try:
            async with timer:
                if route.is_async:
                    result: object = await route.adapter.deliver(context, route.config)  # type: ignore[misc]
                else:
                    result = await anyio.to_thread.run_sync(
                        route.adapter.deliver, context, route.config, abandon_on_cancel=True, limiter=threads
                    )
        except TimeoutError as exc:
            if timer.expired():
                return Failed("temporary", {"error": "timeout", "timeout": route.deadline})
            return Failed("temporary", {"exception": type(exc).__name__})
        except Exception as exc:
            # An adapter that raises is a temporary failure, recorded like any other: the contract
            # then still ends the delivery (retries, or exhaustion on the last attempt).
            return Failed("temporary", {"exception": type(exc).__name__})
        if inspect.iscoroutine(result):
            result.close()  # a sync deliver returned a coroutine: garbage, classified as such
        return result

    def _render(self, context: DeliveryContext) -> DeliveryContext | Failed:
        assert context.render_key is not None
        assert context.render_version is not None
        try:
            rendered = self.templates.render(
                context.render_key, context.render_version, context.channel, context.render_data
            )
        except RenderError as exc:
            return Failed("permanent", {"error": "render_failed", "reason": exc.reason, "detail": exc.detail})
        return dataclasses.replace(context, metadata={**context.metadata, **rendered.parts})

    # -- one at a time, without the queue ----------------------------------------------------------

    async def _call_alone(self, route: Route, context: DeliveryContext) -> object:
        return await self.call_adapter(route, context, anyio.CapacityLimiter(1))

    def deliver_now(self, delivery_id: uuid.UUID | str) -> Delivery:
        """Send one attempt of a delivery now, in this thread, without the queue (sync dispatch).

        Needs ``session_factory``, and a thread with no running event loop (an async adapter is
        run to completion in a loop of its own). The perform checkpoint is the batched path's own
        (the same claim statement). Nothing retries it: a temporary failure leaves the delivery
        ``failed``, and a delivery deferred by quiet hours stays deferred until a call after its
        ``next_eligible_at``. Permanent and bounced failures end it as usual. Returns the
        delivery as it is afterwards.
        """
        if self.session_factory is None:
            raise ChimewayError("deliver_now needs Dispatcher(session_factory=...)")
        key = uuid.UUID(str(delivery_id))
        with self.session_factory() as session:
            # The batched path's own claim statement, for one delivery: the same perform
            # checkpoint (preferences, quiet hours, cap, read fallback), the same moves.
            connection = session.connection()
            rows = connection.exec_driver_sql(self.queries.dispatch_claim, {"ids": "{" + str(key) + "}"})
            claims, lost = records.interpret([tuple(row) for row in rows])
            if lost:
                records.settle_lost(claims, lost, {str(key): deliveries.get_delivery(session, key).status})
            session.commit()
            found = claims.get(key)
            if found is None:
                raise DeliveryNotFound(key)
            if found.kind in ("ended", "suppressed", "deferred"):
                delivery = deliveries.get_delivery(session, key)
                if found.kind != "ended":
                    log_outcome(key, found.channel, found.kind, found.reason, None)
                session.commit()
                return delivery
        assert found.context is not None
        route = self.route_for(found.context.channel)
        if found.kind == "undecodable":
            result: object = Failed("permanent", {"error": "undecodable_notification_metadata"})
        else:
            result = anyio.run(self._call_alone, route, found.context)
        with self.session_factory() as session:
            outcome = deliveries.AttemptOutcome(*classify(result), adapter=route.name)
            recorded = deliveries.record_attempt(session, key, outcome)
            session.commit()
            log_outcome(
                key,
                recorded.delivery.channel,
                recorded.delivery.status,
                recorded.delivery.suppression_reason,
                recorded.attempt.attempt_number,
            )
            return deliveries.get_delivery(session, key)


def _delivery_id(args: Any) -> uuid.UUID | None:
    value = args.get("delivery_id") if isinstance(args, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
