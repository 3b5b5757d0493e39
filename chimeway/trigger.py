"""``trigger``: record an event, one notification per recipient, one delivery per channel, and
enqueue a dispatch job per ready delivery — all in the caller's transaction.

A repeated idempotency key returns the existing event and creates nothing (``duplicate=True``),
also when the two triggers race: the unique index on the key decides.

The event is one ORM statement; the rest is written set-wise whatever the number of recipients
(:mod:`chimeway.planning`): the notifications streamed with ``COPY`` while the notifier builds
them, one statement deciding every planning-time suppression, then the deliveries and their
dispatch jobs with ``COPY``. One event to 100,000 recipients commits in seconds. Deliveries a
digest rule holds get no dispatch job: :mod:`chimeway.digests.hold` files them in their buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from pgqueue.drivers import AsyncWriter, SyncWriter, data_error_details
from pgqueue.store import queries_for as queue_queries_for
from pgqueue.targets import async_writer, sync_writer

from . import telemetry
from .digests.hold import ahold, hold
from .dispatch import dispatch_job
from .journeys.start import astart_runs, start_runs
from .notifier import Notifier
from .planning import FanOut
from .store import Queries, queries_for
from .trigger_call import PlanningFailed, TriggerCall, TriggerError, TriggerResult

__all__ = ["PlanningFailed", "TriggerError", "TriggerResult", "atrigger", "trigger"]


def _mapped_schema(connection: Connection) -> str | None:
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    schema = translate.get(None)
    return schema if isinstance(schema, str) else None


def _refused_content(exc: BaseException) -> TriggerError | None:
    """The error to raise when the database refused the notifier's content, else None."""
    details = data_error_details(exc)
    if details is None:
        return None
    message, context = details
    # The context names the COPY line (the recipient's position, from 1) and the offending value.
    where = "; ".join(context.splitlines())
    return TriggerError(f"build() returned content the database refuses ({message}): {where}")


def _write(
    writer: SyncWriter,
    savepoint: Callable[[], AbstractContextManager[Any]],
    plan: FanOut,
    queries: Queries,
    queue_schema: str,
    session: Session,
) -> None:
    """Statements 2 to 6 of a trigger, on the caller's connection (see chimeway.planning).

    ``savepoint`` opens one through SQLAlchemy, for drivers that can't open one themselves.
    """
    try:
        # A savepoint: the notifier may raise mid-COPY, and the caller's transaction must stay
        # as usable as before the call.
        with writer.savepoint() or savepoint():
            writer.copy(queries.copy_notifications, plan.notification_rows())
    except Exception as exc:
        refused = _refused_content(exc)
        if refused is None:
            raise
        raise refused from None
    plan.take_suppressions(writer.execute(queries.suppressed_at_planning, plan.suppression_params()))
    copy_jobs = False
    if plan.job_count:
        reserved = writer.execute(
            queue_queries_for(queue_schema).reserve_job_ids, plan.reserve_params(queue_schema)
        )
        copy_jobs = plan.take_reserved(reserved[0] if reserved else None)
    writer.copy(queries.copy_deliveries, plan.delivery_rows())
    if plan.job_count:
        if copy_jobs:
            writer.copy(plan.job_copy_statement(queue_schema), plan.job_rows())
        else:
            jobs = pgqueue.insert_all(session, plan.dispatch_jobs(dispatch_job), schema=queue_schema)
            plan.job_ids = [job.id for job in jobs]
    delayed = plan.fallback_jobs(dispatch_job)
    if delayed:
        jobs = pgqueue.insert_all(session, delayed, schema=queue_schema)
        plan.job_ids = [*plan.job_ids, *(job.id for job in jobs)]


async def _awrite(
    writer: AsyncWriter,
    savepoint: Callable[[], AbstractAsyncContextManager[Any]],
    plan: FanOut,
    queries: Queries,
    queue_schema: str,
    session: AsyncSession,
) -> None:
    """The async twin of :func:`_write`."""
    try:
        async with writer.savepoint() or savepoint():
            await writer.copy(queries.copy_notifications, plan.notification_rows())
    except Exception as exc:
        refused = _refused_content(exc)
        if refused is None:
            raise
        raise refused from None
    plan.take_suppressions(await writer.execute(queries.suppressed_at_planning, plan.suppression_params()))
    copy_jobs = False
    if plan.job_count:
        reserved = await writer.execute(
            queue_queries_for(queue_schema).reserve_job_ids, plan.reserve_params(queue_schema)
        )
        copy_jobs = plan.take_reserved(reserved[0] if reserved else None)
    await writer.copy(queries.copy_deliveries, plan.delivery_rows())
    if plan.job_count:
        if copy_jobs:
            await writer.copy(plan.job_copy_statement(queue_schema), plan.job_rows())
        else:
            jobs = await pgqueue.ainsert_all(session, plan.dispatch_jobs(dispatch_job), schema=queue_schema)
            plan.job_ids = [job.id for job in jobs]
    delayed = plan.fallback_jobs(dispatch_job)
    if delayed:
        jobs = await pgqueue.ainsert_all(session, delayed, schema=queue_schema)
        plan.job_ids = [*plan.job_ids, *(job.id for job in jobs)]


def _queries(writer: SyncWriter, mapped: str | None) -> Queries:
    """The statements for where the session maps chimeway's tables, else where its search_path
    finds them."""
    if mapped is None:
        rows = writer.execute(queries_for().tables_schema, {})
        mapped = rows[0][0] if rows else "public"
    return queries_for(mapped)


async def _aqueries(writer: AsyncWriter, mapped: str | None) -> Queries:
    """The async twin of :func:`_queries`."""
    if mapped is None:
        rows = await writer.execute(queries_for().tables_schema, {})
        mapped = rows[0][0] if rows else "public"
    return queries_for(mapped)


def trigger(
    session: Session,
    notifier: Notifier,
    params: Mapping[str, Any],
    *,
    idempotency_key: str,
    correlation_id: str | None = None,
    queue_schema: str = "public",
) -> TriggerResult:
    """Fan ``params`` out through ``notifier`` in ``session``'s transaction; see the module doc.

    ``session`` is a SQLAlchemy ``Session`` on psycopg or psycopg2 (also the one
    ``AsyncSession.run_sync`` hands out, on psycopg or asyncpg); chimeway's tables are where its
    ``schema_translate_map`` maps them (else its search_path). The caller commits: rolling back
    leaves nothing. ``queue_schema`` is where pgqueue's ``jobs`` table lives.
    """
    call = TriggerCall.check(notifier, params, idempotency_key, correlation_id)
    with telemetry.span(("chimeway", "events", "create"), {"notification_key": call.key}):
        event = session.scalars(call.insert_event()).one_or_none()
    if event is None:
        return TriggerResult(session.scalars(call.existing_event()).one(), duplicate=True)
    plan = call.fan_out(event)
    connection = session.connection()
    mapped = _mapped_schema(connection)
    start = call.journey_start()
    with call.plan_span(event) as span, sync_writer(session) as writer:
        queries = _queries(writer, mapped)
        _write(writer, connection.begin_nested, plan, queries, queue_schema, session)
        hold(writer, session, plan, call.payload, queries, queue_schema)
        if start is not None:
            identities = [r.identity for r in plan.recipients]
            start_runs(writer, queries, start, plan.notification_ids, identities, session, queue_schema)
        return call.result(event, plan, span, start)


async def atrigger(
    session: AsyncSession,
    notifier: Notifier,
    params: Mapping[str, Any],
    *,
    idempotency_key: str,
    correlation_id: str | None = None,
    queue_schema: str = "public",
) -> TriggerResult:
    """The async twin of :func:`trigger`, in an ``AsyncSession``'s transaction (psycopg or asyncpg).

    The notifier's methods are plain functions, called on the event loop: keep them quick (no
    I/O), or fetch what they need before triggering.
    """
    call = TriggerCall.check(notifier, params, idempotency_key, correlation_id)
    with telemetry.span(("chimeway", "events", "create"), {"notification_key": call.key}):
        event = (await session.scalars(call.insert_event())).one_or_none()
    if event is None:
        return TriggerResult((await session.scalars(call.existing_event())).one(), duplicate=True)
    plan = call.fan_out(event)
    connection = await session.connection()
    assert connection.sync_connection is not None
    mapped = _mapped_schema(connection.sync_connection)
    start = call.journey_start()
    with call.plan_span(event) as span:
        async with async_writer(session) as writer:
            queries = await _aqueries(writer, mapped)
            await _awrite(writer, connection.begin_nested, plan, queries, queue_schema, session)
            await ahold(writer, session, plan, call.payload, queries, queue_schema)
            if start is not None:
                identities = [r.identity for r in plan.recipients]
                await astart_runs(
                    writer, queries, start, plan.notification_ids, identities, session, queue_schema
                )
        return call.result(event, plan, span, start)
