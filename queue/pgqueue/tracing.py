"""OpenTelemetry spans for jobs: insert → fetch → perform, joined across processes through meta.

Needs the ``otel`` extra (``opentelemetry-api``; your application configures the SDK and an
exporter). Call :func:`instrument` once in every process that inserts or performs jobs::

    import pgqueue.tracing
    pgqueue.tracing.instrument()          # or instrument(tracer_provider=provider)

Then each insert runs in a ``pgqueue.insert`` span (kind PRODUCER) whose context is written into
every inserted job's ``meta["otel"]`` (W3C ``traceparent``, through the global propagator). When a
node performs the job it continues that trace: a ``pgqueue.fetch`` span (from the moment the job
was due to the moment a node claimed it, database time) and, inside it, ``pgqueue.perform``
(kind CONSUMER) around the worker's ``perform``, current while it runs, so spans your worker opens
nest under it. A job enqueued while handling a web request thus appears in that request's trace.

Spans carry ids, the queue, the worker, the attempt and the outcome, never args or meta (see
``docs/telemetry.md`` for the shared vocabulary).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__, middleware, telemetry
from .job import Job, NewJob

__all__ = ["META_KEY", "instrument", "uninstrument"]

#: the key of job meta holding the trace context of the insert
META_KEY = "otel"
_HANDLER_ID = "pgqueue-otel"
_JOB_EVENTS = [("job", "start"), ("job", "stop"), ("job", "exception")]


def _ns(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1_000_000_000)


class _Tracer:
    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._open: dict[tuple[int, int], tuple[trace.Span, object]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def insert(self, jobs: Sequence[NewJob]) -> Iterator[Sequence[NewJob]]:
        workers = sorted({job.worker for job in jobs})
        name = f"pgqueue.insert {workers[0]}" if len(workers) == 1 else "pgqueue.insert"
        attributes: dict[str, Any] = {
            "messaging.system": "pgqueue",
            "messaging.operation.type": "send",
            "pgqueue.jobs": len(jobs),
            "pgqueue.queues": sorted({job.queue for job in jobs}),
        }
        with self.tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if not carrier:
                yield jobs
                return
            yield [_with_context(job, carrier) for job in jobs]

    def handle(
        self, event: tuple[str, ...], measurements: Mapping[str, float], metadata: Mapping[str, Any]
    ) -> None:
        job = metadata.get("job")
        if job is None:
            return
        key = (int(job.id), int(job.attempt))
        if event == ("job", "start"):
            self._start(job, key)
            return
        with self._lock:
            opened = self._open.pop(key, None)
        if opened is None:
            return
        span, token = opened
        span.set_attribute("pgqueue.outcome", str(metadata.get("outcome")))
        span.set_attribute("pgqueue.state", str(metadata.get("state")))
        error = metadata.get("error")
        if event == ("job", "exception"):
            if isinstance(error, BaseException):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__ if error is not None else None))
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def _start(self, job: Any, key: tuple[int, int]) -> None:
        carrier = job.meta.get(META_KEY) if isinstance(job.meta, dict) else None
        parent = propagate.extract(carrier) if isinstance(carrier, dict) else otel_context.Context()
        attributes: dict[str, Any] = {
            "messaging.system": "pgqueue",
            "messaging.destination.name": job.queue,
            "pgqueue.job.id": job.id,
            "pgqueue.job.attempt": job.attempt,
            "pgqueue.worker": job.worker,
        }
        fetch = self.tracer.start_span(
            f"pgqueue.fetch {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={**attributes, "messaging.operation.type": "receive"},
            start_time=_ns(job.scheduled_at),
        )
        fetch.end(end_time=_ns(job.attempted_at))
        perform = self.tracer.start_span(
            f"pgqueue.perform {job.worker}",
            context=trace.set_span_in_context(fetch, parent),
            kind=SpanKind.CONSUMER,
            attributes={**attributes, "messaging.operation.type": "process"},
        )
        token = otel_context.attach(trace.set_span_in_context(perform))
        with self._lock:
            self._open[key] = (perform, token)


def _with_context(job: NewJob, carrier: Mapping[str, str]) -> NewJob:
    meta = {**job.meta, META_KEY: dict(carrier)}
    return job._replace(meta=meta, meta_json=orjson.dumps(meta).decode())


class _InsertSpans(middleware.Middleware):
    """Opens the insert span around the rest of the chain and hands it the jobs with the context."""

    def __init__(self, tracer: _Tracer) -> None:
        self.tracer = tracer

    def insert(self, jobs: Sequence[NewJob], call_next: Callable[[Sequence[NewJob]], list[Job]]) -> list[Job]:
        if not jobs:
            return call_next(jobs)
        with self.tracer.insert(jobs) as traced:
            return call_next(traced)

    async def ainsert(
        self, jobs: Sequence[NewJob], call_next: Callable[[Sequence[NewJob]], Awaitable[list[Job]]]
    ) -> list[Job]:
        if not jobs:
            return await call_next(jobs)
        with self.tracer.insert(jobs) as traced:
            return await call_next(traced)


_active: _InsertSpans | None = None


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace every insert and perform in this process (again: replaces the previous setup).

    Inserts are traced by a process-wide :mod:`pgqueue.middleware` (added last, so it is the
    innermost: middleware added before it can still change the jobs it sees); performs through
    the telemetry events every runtime emits.
    """
    global _active
    uninstrument()
    tracer = _Tracer(trace.get_tracer("pgqueue", __version__, tracer_provider))
    _active = _InsertSpans(tracer)
    middleware.add(_active)
    telemetry.attach(_HANDLER_ID, tracer.handle, _JOB_EVENTS)


def uninstrument() -> None:
    """Stop tracing in this process."""
    global _active
    if _active is not None:
        middleware.remove(_active)
    telemetry.detach(_HANDLER_ID)
    _active = None
