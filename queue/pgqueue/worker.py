"""Workers: the classes that perform jobs, their options, their results and their registry.

A worker is a subclass with options given as class keywords::

    class Resize(pgqueue.Worker, queue="media", max_attempts=5, priority=1):
        async def perform(self, job: pgqueue.Job) -> None: ...

Options are checked when the class is defined, so a bad one fails at import with a message that
names it. Every worker registers itself under its ``name`` (by default ``module.QualName``); the
runtime finds a job's worker only in this registry, so a row can never make a process import code.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from . import flow_meta as flow
from . import options as opt
from .backoff import default_backoff
from .errors import ConfigError
from .job import Job, NewJob, UniqueSpec
from .lifecycle import describe_error

__all__ = [
    "Cancel",
    "Discard",
    "Error",
    "JobOutcome",
    "Snooze",
    "Worker",
    "WorkerRegistry",
    "load_worker_modules",
    "registry",
]


class JobOutcome(Exception):
    """Base of the non-success outcomes a ``perform`` may return *or* raise."""

    reason: Any

    def __init__(self, reason: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"

    def __str__(self) -> str:
        return "" if self.reason is None else str(self.reason)


class Error(JobOutcome):
    """Fail this attempt: retried after the worker's backoff, or discarded when out of attempts."""


class Cancel(JobOutcome):
    """Stop for good: the job ends ``cancelled`` and is never retried."""


class Discard(JobOutcome):
    """Give up: the job ends ``discarded`` (kept for inspection) and is never retried."""


class Snooze(JobOutcome):
    """Run again in ``seconds`` without using up an attempt; ``meta.snoozed`` counts snoozes."""

    seconds: float

    def __init__(self, seconds: float | timedelta) -> None:
        self.seconds = opt.seconds(seconds, "snooze")
        super().__init__(self.seconds)


class WorkerRegistry:
    """Worker classes by name. Thread-safe; later definitions of the same name replace earlier ones."""

    def __init__(self) -> None:
        self._workers: dict[str, type[Worker]] = {}
        self._lock = threading.Lock()

    def register(self, worker: type[Worker]) -> None:
        with self._lock:
            self._workers[worker.name] = worker

    def get(self, name: str) -> type[Worker] | None:
        return self._workers.get(name)

    def names(self) -> list[str]:
        return sorted(self._workers)

    def __contains__(self, name: object) -> bool:
        return name in self._workers


#: The process-wide registry every ``Worker`` subclass joins when it is defined.
registry = WorkerRegistry()

_UNSET: Any = object()
_new_tuple = tuple.__new__
_NEW_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "max_attempts",
        "tags",
        "meta",
        "schedule_in",
        "scheduled_at",
        "unique",
        "replace",
        "weight",
        "partition",
    }
)


class Worker:
    """Subclass this and define ``perform(self, job)`` (``def`` or ``async def``).

    Class keywords: ``queue`` (default "default"), ``max_attempts`` (20), ``priority`` (0-9, 0 runs
    first), ``tags``, ``unique`` (``True`` or a dict of fields/keys/period/states/timestamp),
    ``replace`` (fields to overwrite on a unique conflict), ``partition_by`` (what a job's
    partition key is made of, for queues with partitioned limits: ``"worker"``, ``"args.KEY"``,
    ``"meta.KEY"``), ``name`` (the registry key) and ``abstract=True`` for a base class that is not
    itself a worker.
    """

    name: ClassVar[str] = ""
    queue: ClassVar[str] = "default"
    max_attempts: ClassVar[int] = 20
    priority: ClassVar[int] = 0
    tags: ClassVar[tuple[str, ...]] = ()
    unique: ClassVar[UniqueSpec | None] = None
    replace: ClassVar[dict[str, tuple[str, ...]]] = {}
    partition_by: ClassVar[tuple[str, ...]] = ()
    #: set when the class is defined: True when ``perform`` is a coroutine function
    is_async: ClassVar[bool] = False

    def __init_subclass__(
        cls,
        *,
        queue: str = _UNSET,
        max_attempts: int = _UNSET,
        priority: int = _UNSET,
        tags: Any = _UNSET,
        unique: Any = _UNSET,
        replace: Any = _UNSET,
        partition_by: Any = _UNSET,
        name: str = _UNSET,
        abstract: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init_subclass__()
        where = f"worker {cls.__module__}.{cls.__qualname__}"
        if unknown:
            raise ConfigError(f"{where}: unknown option {sorted(unknown)[0]!r}")

        def pick(keyword: Any, attribute: str) -> Any:
            # A keyword wins; else a value set in the class body; else the inherited one.
            return keyword if keyword is not _UNSET else getattr(cls, attribute)

        try:
            cls.queue = opt.validate_queue(pick(queue, "queue"))
            cls.max_attempts = opt.validate_max_attempts(pick(max_attempts, "max_attempts"))
            cls.priority = opt.validate_priority(pick(priority, "priority"))
            raw_tags = pick(tags, "tags")
            if raw_tags is None or any(not isinstance(t, str) for t in raw_tags):
                raise ConfigError(f"tags must be a list of strings, got {raw_tags!r}")
            cls.tags = opt.normalize_tags(raw_tags)
            cls.unique = opt.compile_unique(pick(unique, "unique"))
            cls.replace = opt.compile_replace(pick(replace, "replace"))
            cls.partition_by = flow.validate_partition_by(pick(partition_by, "partition_by"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if abstract:
            return
        if cls.perform is Worker.perform:
            raise ConfigError(f"{where}: define perform(self, job)")
        cls.is_async = inspect.iscoroutinefunction(cls.perform)
        chosen = (
            name if name is not _UNSET else cls.__dict__.get("name") or f"{cls.__module__}.{cls.__qualname__}"
        )
        if not isinstance(chosen, str) or not 0 < len(chosen) <= 255:
            raise ConfigError(f"{where}: name must be a string of 1..255 characters, got {chosen!r}")
        cls.name = chosen
        registry.register(cls)

    def perform(self, job: Job) -> Any:
        """Do the job's work. Return None or any value for success, or return/raise an outcome."""
        raise TypeError(f"{type(self).__name__} does not define perform(self, job)")

    def backoff(self, job: Job) -> float:
        """Seconds to wait before retrying ``job`` after this failed attempt. Override to change."""
        return default_backoff(job.attempt, job.max_attempts)

    def timeout(self, job: Job) -> float | None:
        """Seconds ``perform`` may run before the attempt fails with a timeout; None for no limit."""
        return None

    @classmethod
    def new(cls, args: Mapping[str, Any] | None = None, **options: Any) -> NewJob:
        """Build an unsaved job for this worker; pass it to ``pgqueue.insert``.

        Options: ``schedule_in`` (seconds or timedelta), ``scheduled_at`` (aware datetime),
        ``priority``, ``queue``, ``max_attempts``, ``tags``, ``meta``, ``unique``, ``replace``,
        ``weight`` (units the job counts for against a rate limit, ``meta.weight``) and
        ``partition`` (its partition key, ``meta.partition_key``, instead of ``partition_by``'s).
        """
        if options:
            unknown = options.keys() - _NEW_OPTIONS
            if unknown:
                raise ConfigError(f"unknown option {sorted(unknown)[0]!r}; valid: {sorted(_NEW_OPTIONS)}")
        args = {} if args is None else args
        if not isinstance(args, dict):
            args = dict(args) if isinstance(args, Mapping) else args
        args_json = opt.encode_json_object(args, "args")
        # Every option defaults to the class's, validated when the class was defined: a call with
        # no options (the bulk-insert case, once per job) checks only its args.
        queue, priority, max_attempts, tags = cls.queue, cls.priority, cls.max_attempts, cls.tags
        unique, replace = cls.unique, cls.replace
        meta: dict[str, Any] = {}
        meta_json = "{}"
        scheduled_at: datetime | None = None
        schedule_in: float | None = None
        if options:
            if "meta" in options:
                meta = options["meta"]
                meta_json = opt.encode_json_object(meta, "meta")
            if "queue" in options:
                queue = opt.validate_queue(options["queue"])
            if "priority" in options:
                priority = opt.validate_priority(options["priority"])
            if "max_attempts" in options:
                max_attempts = opt.validate_max_attempts(options["max_attempts"])
            if "tags" in options:
                tags = opt.normalize_tags(options["tags"])
            if options.get("scheduled_at") is not None:
                scheduled_at = opt.validate_scheduled_at(options["scheduled_at"])
            elif options.get("schedule_in") is not None:
                schedule_in = opt.validate_schedule_in(options["schedule_in"])
            if "unique" in options:
                unique = opt.compile_unique(opt.merge_unique(cls.unique, options["unique"]))
            if "replace" in options:
                replace = opt.compile_replace(options["replace"])
        if cls.partition_by or (options and ("weight" in options or "partition" in options)):
            meta = flow.flow_meta(cls.name, cls.partition_by, args, meta, options)
            meta_json = opt.encode_json_object(meta, "meta")
        key = None
        if unique is not None:
            key = opt.unique_key(unique, worker=cls.name, queue=queue, args=args, meta=meta)
        # Built by tuple.__new__, as a bulk insert builds one per job: the named tuple's own
        # __new__ takes its fields as arguments through a Python frame, and costs twice as much.
        return _new_tuple(
            NewJob,
            (
                cls.name,
                args,
                queue,
                priority,
                max_attempts,
                tags,
                meta,
                scheduled_at,
                schedule_in,
                unique,
                key,
                replace,
                args_json,
                meta_json,
            ),
        )


def load_worker_modules(modules: Iterable[str]) -> None:
    """Import the modules the operator named; their Worker classes register themselves.

    This is the only place pgqueue imports code by name, and the names come from configuration,
    never from a job row.
    """
    for module in modules:
        if not isinstance(module, str) or not module or module.startswith("."):
            raise ConfigError(f"workers must be absolute module paths, got {module!r}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"can't import worker module {module!r}: {exc}") from None
        except ConfigError:
            raise  # a worker defined with a bad option: the message names it already
        except Exception as exc:
            # Importing runs the module's code; a bug there (or a SyntaxError) is still a
            # configuration error that names the module, not a traceback out of start().
            raise ConfigError(f"can't import worker module {module!r}: {describe_error(exc)}") from exc
