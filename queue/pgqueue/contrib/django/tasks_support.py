"""The worker that runs ``django.tasks`` tasks enqueued through :mod:`pgqueue.contrib.django.tasks`.

A job names its task by path (``shop.tasks.send_receipt``), but the worker never imports by that
name: it looks the task up only among the modules ``PGQUEUE['TASK_MODULES']`` lists, which the
worker process imports at start. A row naming anything else fails its attempt, saying so.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Any

from ...errors import ConfigError, PgQueueError
from ...job import Job
from ...worker import Worker

__all__ = ["TASK_WORKER", "RunDjangoTask", "UnknownTaskError", "task_modules_loaded"]

TASK_WORKER = "pgqueue.contrib.django.RunDjangoTask"
_allowed: set[str] = set()


class UnknownTaskError(PgQueueError):
    """A job names a task outside the modules the worker was told to load."""


def task_modules_loaded(modules: Iterable[str]) -> None:
    """Import the task modules the settings name; only their tasks can run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"can't import task module {module!r}: {exc}") from None
        _allowed.add(module)


def _resolve(path: object) -> Any:
    from django.tasks import Task

    module, _, name = str(path).rpartition(".")
    if module not in _allowed or module not in sys.modules:
        raise UnknownTaskError(f"task {path!r} is not in a module PGQUEUE['TASK_MODULES'] lists")
    task = getattr(sys.modules[module], name, None)
    if not isinstance(task, Task):
        raise UnknownTaskError(f"{path!r} is not a django.tasks task")
    return task


def result_of(task: Any, job: Job) -> Any:
    """The ``django.tasks.TaskResult`` a job stands for (Django 6; imported only when asked)."""
    from django.tasks import TaskResult, TaskResultStatus
    from django.tasks.base import TaskError

    status = {
        "available": TaskResultStatus.READY,
        "scheduled": TaskResultStatus.READY,
        "retryable": TaskResultStatus.READY,
        "executing": TaskResultStatus.RUNNING,
        "completed": TaskResultStatus.SUCCESSFUL,
        "discarded": TaskResultStatus.FAILED,
        "cancelled": TaskResultStatus.FAILED,
    }
    return TaskResult(
        task=task,
        id=str(job.id),
        status=status.get(str(job.state), TaskResultStatus.READY),
        enqueued_at=job.inserted_at,
        started_at=job.attempted_at,
        finished_at=job.completed_at or job.discarded_at or job.cancelled_at,
        last_attempted_at=job.attempted_at,
        args=list(job.args.get("args") or []),
        kwargs=dict(job.args.get("kwargs") or {}),
        backend=task.backend,
        errors=[TaskError(exception_class_path="", traceback=str(e.get("error", ""))) for e in job.errors],
        worker_ids=[(job.attempted_by or ["?"])[0]] * job.attempt,
    )


class RunDjangoTask(Worker, name=TASK_WORKER, queue="default"):
    """Runs one task: args ``{"task": path, "args": [...], "kwargs": {...}}``."""

    def perform(self, job: Job) -> Any:
        task = _resolve(job.args.get("task"))
        args = list(job.args.get("args") or [])
        kwargs = dict(job.args.get("kwargs") or {})
        if task.takes_context:
            from django.tasks import TaskContext

            return task.call(TaskContext(task_result=result_of(task, job)), *args, **kwargs)
        return task.call(*args, **kwargs)
