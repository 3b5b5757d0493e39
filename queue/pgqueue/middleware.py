"""Middleware: an ordered chain around ``perform`` and around inserting jobs.

The seam telemetry, tracing and error reporting plug into. Subclass :class:`Middleware` and
override the hooks you need; each receives ``call_next`` and returns what it returns (or raises):

- ``perform(job, call_next)`` (async) wraps every attempt a runtime (or ``pgqueue.testing``)
  runs, sync workers included; ``await call_next()`` runs the worker's ``perform`` and gives its
  result, or raises what it raised. Whatever the chain returns or raises is classified as the
  job's outcome, exactly as if ``perform`` had. A worker's timeout covers the whole chain.
- ``insert(jobs, call_next)`` wraps ``insert``/``insert_all``; ``ainsert(jobs, call_next)`` wraps
  ``ainsert``/``ainsert_all``. Pass ``call_next`` the jobs to insert (changed, if you like: see
  :func:`with_meta`); it returns them saved.

Order: middleware added first is outermost. :func:`add` installs one for the whole process
(inserts and every runtime's jobs); ``Runtime(middleware=[...])`` adds some for one runtime's
jobs only, inside the process-wide ones. With no middleware, nothing is added to the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import options as opt
from .job import Job, NewJob

__all__ = [
    "Middleware",
    "add",
    "installed",
    "remove",
    "run_ainsert",
    "run_insert",
    "run_perform",
    "with_meta",
]

_chain: tuple[Middleware, ...] = ()


class Middleware:
    """Pass-through hooks; override the ones you need (see the module docstring)."""

    async def perform(self, job: Job, call_next: Callable[[], Awaitable[Any]]) -> Any:
        return await call_next()

    def insert(self, jobs: Sequence[NewJob], call_next: Callable[[Sequence[NewJob]], list[Job]]) -> list[Job]:
        return call_next(jobs)

    async def ainsert(
        self, jobs: Sequence[NewJob], call_next: Callable[[Sequence[NewJob]], Awaitable[list[Job]]]
    ) -> list[Job]:
        return await call_next(jobs)


def add(middleware: Middleware) -> None:
    """Install ``middleware`` for the whole process, inside those installed before it."""
    global _chain
    if not isinstance(middleware, Middleware):
        raise TypeError(
            f"middleware must be a pgqueue.middleware.Middleware, got {type(middleware).__name__}"
        )
    _chain = (*_chain, middleware)


def remove(middleware: Middleware) -> None:
    """Uninstall ``middleware`` (nothing if it isn't installed)."""
    global _chain
    _chain = tuple(m for m in _chain if m is not middleware)


def installed() -> tuple[Middleware, ...]:
    """The process-wide chain, outermost first."""
    return _chain


def with_meta(job: NewJob, **meta: Any) -> NewJob:
    """``job`` with ``meta`` merged into its meta (re-encoded and validated as ``Worker.new`` does)."""
    merged = {**job.meta, **meta}
    return job._replace(meta=merged, meta_json=opt.encode_json_object(merged, "meta"))


async def run_perform(chain: Sequence[Middleware], job: Job, perform: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``perform`` through ``chain`` (outermost first)."""

    def link(index: int) -> Callable[[], Awaitable[Any]]:
        if index == len(chain):
            return perform
        middleware, inner = chain[index], link(index + 1)
        return lambda: middleware.perform(job, inner)

    return await link(0)()


def run_insert(jobs: Sequence[NewJob], insert: Callable[[Sequence[NewJob]], list[Job]]) -> list[Job]:
    """Run a sync insert through the process-wide chain."""
    chain = _chain

    def link(index: int) -> Callable[[Sequence[NewJob]], list[Job]]:
        if index == len(chain):
            return insert
        middleware, inner = chain[index], link(index + 1)
        return lambda given: middleware.insert(given, inner)

    return link(0)(jobs)


async def run_ainsert(
    jobs: Sequence[NewJob], insert: Callable[[Sequence[NewJob]], Awaitable[list[Job]]]
) -> list[Job]:
    """Run an async insert through the process-wide chain."""
    chain = _chain

    def link(index: int) -> Callable[[Sequence[NewJob]], Awaitable[list[Job]]]:
        if index == len(chain):
            return insert
        middleware, inner = chain[index], link(index + 1)
        return lambda given: middleware.ainsert(given, inner)

    return await link(0)(jobs)
