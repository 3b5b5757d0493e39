"""OpenTelemetry: a job's spans join the trace that enqueued it, across a real insert and perform.

The SDK's in-memory exporter collects the spans; the job's trace context travels only through
its row (``meta["otel"]``), read back by a running node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgqueue
import pgqueue.tracing
from pgqueue.runtime import Runtime
from tests.helpers import await_until

pytestmark = pytest.mark.anyio

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


class Traced(pgqueue.Worker, queue="traced"):
    """Opens a span of its own inside perform (a sync worker: it runs in a thread)."""

    def perform(self, job: pgqueue.Job) -> None:
        with PROVIDER.get_tracer("app").start_as_current_span("inside perform"):
            if job.args.get("fail"):
                raise ValueError("boom")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    pgqueue.tracing.instrument(PROVIDER)
    yield EXPORTER
    pgqueue.tracing.uninstrument()
    EXPORTER.clear()


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> ReadableSpan:
    (found,) = [s for s in spans if s.name.startswith(prefix)]
    return found


async def test_insert_fetch_and_perform_spans_join_the_request_trace(
    exporter: InMemorySpanExporter, dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    # Given a job enqueued while handling a request
    with PROVIDER.get_tracer("app").start_as_current_span("POST /orders") as request:
        job = pgqueue.insert(conn, Traced.new({"order": 1}), schema=schema)
    conn.commit()
    stored = conn.execute(f'SELECT meta FROM "{schema}".jobs WHERE id = %s', (job.id,)).fetchone()
    assert stored is not None
    assert "traceparent" in stored[0]["otel"]

    # When a node performs it
    async with Runtime(dsn, schema=schema, queues={"traced": 1}, plugins=[]):
        await await_until(
            lambda: any(s.name.startswith("pgqueue.perform") for s in exporter.get_finished_spans())
        )

    # Then insert → fetch → perform (→ the worker's own span) form one trace under the request
    spans = exporter.get_finished_spans()
    insert = by_name(spans, "pgqueue.insert")
    fetch = by_name(spans, "pgqueue.fetch")
    perform = by_name(spans, "pgqueue.perform")
    inner = by_name(spans, "inside perform")
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (insert, fetch, perform, inner)} == {trace_id}
    assert insert.parent is not None
    assert insert.parent.span_id == request.get_span_context().span_id
    assert fetch.parent is not None
    assert fetch.parent.span_id == insert.context.span_id
    assert perform.parent is not None
    assert perform.parent.span_id == fetch.context.span_id
    assert inner.parent is not None
    assert inner.parent.span_id == perform.context.span_id
    assert (insert.kind, perform.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert perform.attributes is not None
    assert perform.attributes["pgqueue.job.id"] == job.id
    assert perform.attributes["pgqueue.outcome"] == "success"
    assert "order" not in str(dict(perform.attributes))  # args never become attributes
    assert perform.status.status_code != StatusCode.ERROR


async def test_a_failing_job_ends_its_span_with_an_error_and_the_exception(
    exporter: InMemorySpanExporter, dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    pgqueue.insert(conn, Traced.new({"fail": True}), schema=schema)
    conn.commit()

    async with Runtime(dsn, schema=schema, queues={"traced": 1}, plugins=[]):
        await await_until(
            lambda: any(s.name.startswith("pgqueue.perform") for s in exporter.get_finished_spans())
        )

    perform = by_name(exporter.get_finished_spans(), "pgqueue.perform")
    assert perform.status.status_code == StatusCode.ERROR
    assert [e.name for e in perform.events] == ["exception"]
    assert perform.parent is not None  # under its fetch span, in the insert's trace


async def test_without_an_active_tracer_nothing_is_added_to_meta(
    dsn: str, schema: str, conn: psycopg.Connection[Any]
) -> None:
    pgqueue.tracing.instrument(trace.NoOpTracerProvider())
    try:
        job = pgqueue.insert(conn, Traced.new({}), schema=schema)
    finally:
        pgqueue.tracing.uninstrument()
    assert "otel" not in job.meta
