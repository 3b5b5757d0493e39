"""A backend for Django's tasks framework (``django.tasks``, Django 6) that enqueues pgqueue jobs.

::

    TASKS = {"default": {"BACKEND": "pgqueue.contrib.django.tasks.PgQueueBackend",
                         "QUEUES": ["default", "emails"]}}
    PGQUEUE = {"TASK_MODULES": ["shop.tasks"], "QUEUES": {"default": 10, "emails": 5}}

    @task(queue_name="emails")
    def send_receipt(order_id: int) -> None: ...

    with transaction.atomic():
        send_receipt.enqueue(order.pk)       # a job in the same transaction as the order

``manage.py pgqueue_worker`` runs the tasks. A task's priority (-100..100, higher first) maps onto
pgqueue's 0..9 (0 first); ``run_after`` schedules the job; ``get_result`` reads the job's state
(the return value is not stored: it reads as None once the task has succeeded).
"""

from __future__ import annotations

from typing import Any

from django.tasks import TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
from django.tasks.exceptions import TaskResultDoesNotExist

from ...manage import get_job
from . import _connection, enqueue
from .tasks_support import TASK_WORKER, RunDjangoTask, _resolve, result_of

__all__ = ["PgQueueBackend", "result_of"]


def _priority(task_priority: int) -> int:
    """Django's -100..100 (higher first) as pgqueue's 0..9 (0 first)."""
    span: int = TASK_MAX_PRIORITY - TASK_MIN_PRIORITY
    return int(min(9, (TASK_MAX_PRIORITY - int(task_priority)) * 10 // (span + 1)))


class PgQueueBackend(BaseTaskBackend):
    """Enqueues each task as a pgqueue job on Django's connection (joining ``transaction.atomic``)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        job = RunDjangoTask.new(
            {"task": task.module_path, "args": list(args), "kwargs": dict(kwargs)},
            queue=task.queue_name,
            priority=_priority(task.priority),
            scheduled_at=task.run_after,
        )
        return result_of(task, enqueue(job, using=self.options.get("DATABASE")))

    def get_result(self, result_id: str) -> TaskResult:
        raw, schema = _connection(self.options.get("DATABASE"))
        job = get_job(raw, int(result_id), schema=schema) if str(result_id).isdigit() else None
        if job is None or job.worker != TASK_WORKER:
            raise TaskResultDoesNotExist(result_id)
        return result_of(_resolve(job.args.get("task")), job)
